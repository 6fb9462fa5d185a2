"""JetSeg profiles as data: one frozen table of settings per hardware target.

The builder in :mod:`jetseg_core.model` turns a profile into modules, so a new
variant is a new table, never new layer code.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

MIN_CLASSES = 2
MAX_CLASSES = 255
MIN_INPUT_SIDE = 64
ACTIVATIONS = ('reu', 'tanhexp')


@dataclass(frozen=True)
class JetSegProfile:
    """Settings of one JetSeg variant (paper Table 1 / the authors' arch config).

    Block layout (authors' code for a 512 px input, fixed here so the network does
    not change with the input size): each stage is a list of "growing" JetBlocks,
    each preceded by ``residual_blocks[stage]`` residual JetBlocks. A growing block
    widens the features by the paper's channel rule (S0: b, S1: +b, S2: +2b,
    S3: x2, capped at ``max_channels``) with an expansion of 2x its input (capped
    at ``max_expand_channels``); a residual block keeps its width (expansion 1x).
    """

    name: str
    base_channels: int
    max_channels: int
    max_expand_channels: int
    residual_blocks: tuple[int, int, int, int]
    decoder_width: int
    # Asymmetric (Nx1 then 1xN, dilated) depthwise kernel of the JetConv per stage S0..S3.
    stage_kernels: tuple[int, int, int, int] = (7, 7, 5, 3)
    # Square depthwise kernel that follows the asymmetric pair (carries the stride).
    square_kernel: int = 3
    # Attention after the JetConv, per stage: CBAM in S1, spatial attention in S2, ECA in S3.
    stage_attention: tuple[str | None, str | None, str | None, str | None] = (None, 'cbam', 'sam', 'eca')
    # Resolution of the decoder's shallow branch: 4 -> S1 features (RegSeg style, default);
    # 2 -> S0 features (like the authors' decoder, which runs at 1/2 resolution).
    decoder_stride: int = 4
    # Stride of each growing block per stage: output strides 2, 4, 8, 16 (RegSeg keeps 1/16 too).
    stage_strides: tuple[tuple[int, ...], ...] = ((2,), (2,), (2, 1), (2, 1))

    def grown_channels(self, stage: int, in_channels: int) -> int:
        """Output width of a growing block in ``stage`` (the paper's channel rule, capped)."""
        b = self.base_channels
        out = (b, in_channels + b, in_channels + 2 * b, 2 * in_channels)[stage]
        return min(out, self.max_channels)

    def expand_channels(self, in_channels: int) -> int:
        """Width inside a growing JetBlock: twice its input, capped."""
        return min(2 * in_channels, self.max_expand_channels)

    def stage_channels(self) -> tuple[int, ...]:
        """Output channels of S0..S3."""
        channels, c = [], 3
        for stage, strides in enumerate(self.stage_strides):
            for _ in strides:
                c = self.grown_channels(stage, c)
            channels.append(c)
        return tuple(channels)

    def shallow_head_channels(self) -> int:
        """Width of the decoder's shallow (1/4 or 1/2) head; RegSeg uses 8 for width 128."""
        return max(8, self.decoder_width // 16)


PROFILES: dict[str, JetSegProfile] = {
    'nano': JetSegProfile(
        name='nano', base_channels=8, max_channels=64, max_expand_channels=64,
        residual_blocks=(0, 0, 1, 1), decoder_width=64,
    ),
    'agx': JetSegProfile(
        name='agx', base_channels=16, max_channels=256, max_expand_channels=256,
        residual_blocks=(0, 2, 4, 2), decoder_width=256,
    ),
    'workstation': JetSegProfile(
        name='workstation', base_channels=32, max_channels=512, max_expand_channels=1024,
        residual_blocks=(0, 2, 4, 2), decoder_width=512,
    ),
}


def get_profile(name: str) -> JetSegProfile:
    """Look a profile up by name; the error lists the valid names."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        valid = ', '.join(sorted(PROFILES))
        raise ValueError(f'unknown JetSeg profile {name!r}; valid profiles: {valid}') from None


def check_num_classes(num_classes: int) -> int:
    """Labels are published as uint8 with 255 reserved for 'ignore', hence 2..255."""
    try:
        n = operator.index(num_classes)  # accepts numpy integers, rejects floats and strings
    except TypeError:
        n = None
    if n is None or isinstance(num_classes, bool) or not MIN_CLASSES <= n <= MAX_CLASSES:
        raise ValueError(
            f'num_classes must be an integer in {MIN_CLASSES}..{MAX_CLASSES}, got {num_classes!r}')
    return n
