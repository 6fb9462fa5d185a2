"""JetSeg profiles as data: one frozen table of settings per hardware target.

The builder in :mod:`jetseg_core.model` turns a profile into modules, so a new
variant is a new table, never new layer code.
"""
from __future__ import annotations

from dataclasses import dataclass

MIN_CLASSES = 2
MAX_CLASSES = 255
MIN_INPUT_SIDE = 64
ACTIVATIONS = ('reu', 'tanhexp')


@dataclass(frozen=True)
class JetSegProfile:
    """Settings of one JetSeg variant (paper Table 1 / the authors' arch config).

    Channel rule (paper/authors): S0 = b, S1 = S0 + b, S2 = S1 + 2b, S3 = 2 * S2,
    each capped at ``max_channels``; block expansions are 2x their input,
    capped at ``max_expand_channels``.
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

    def stage_channels(self) -> tuple[int, int, int, int]:
        """Output channels of S0..S3 from the paper's channel rule."""
        b, cap = self.base_channels, self.max_channels
        s0 = min(b, cap)
        s1 = min(s0 + b, cap)
        s2 = min(s1 + 2 * b, cap)
        s3 = min(2 * s2, cap)
        return s0, s1, s2, s3

    def expand_channels(self, in_channels: int) -> int:
        """Width inside a JetBlock: twice its input, capped."""
        return min(2 * in_channels, self.max_expand_channels)

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
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise ValueError(f'num_classes must be an integer in {MIN_CLASSES}..{MAX_CLASSES}, got {num_classes!r}')
    if not MIN_CLASSES <= num_classes <= MAX_CLASSES:
        raise ValueError(f'num_classes must be in {MIN_CLASSES}..{MAX_CLASSES}, got {num_classes}')
    return num_classes
