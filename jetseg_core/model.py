"""JetSeg: the JetNet encoder (stages S0..S3 of JetBlocks) and a RegSeg 'decoder26'-style decoder.

``build_model(profile, num_classes)`` is the one entry point; the architecture is
fully described by the profile table in :mod:`jetseg_core.profiles`.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBnAct, JetBlock, JetStem, make_activation
from .profiles import (
    ACTIVATIONS,
    MIN_INPUT_SIDE,
    JetSegProfile,
    check_num_classes,
    get_profile,
)

__all__ = ['JetNet', 'JetSeg', 'JetSegDecoder', 'build_from_profile', 'build_model']


def _is_exporting() -> bool:
    """True while tracing/compiling, where Python-side shape checks would be baked in or break graphs."""
    if torch.jit.is_tracing():
        return True
    is_compiling = getattr(getattr(torch, 'compiler', None), 'is_compiling', None)
    return bool(is_compiling and is_compiling())


class JetNet(nn.Module):
    """Encoder: four stages S0..S3 (``s0``..``s3``) of JetBlocks with output strides 2, 4, 8, 16.

    S0 is a JetConv stem on the image; in S1..S3 each growing block is preceded by the
    profile's residual blocks (the order of the authors' code).
    """

    def __init__(self, settings: JetSegProfile, activation: str = 'reu', in_channels: int = 3) -> None:
        super().__init__()
        k, sq = settings.stage_kernels, settings.square_kernel
        if len(settings.stage_strides) != 4 or any(len(s) == 0 for s in settings.stage_strides):
            raise ValueError('stage_strides needs at least one block for each of the four stages')
        if settings.stage_strides[0][0] != 2:
            raise ValueError('the S0 stem must have stride 2')
        c = settings.grown_channels(0, in_channels)
        s0: list[nn.Module] = [JetStem(in_channels, c, k[0], sq, activation)]
        for stride in settings.stage_strides[0][1:]:
            s0 += self._growing(settings, 0, c, stride, activation)
            c = s0[-1].out_channels
        s0 += [self._residual(settings, 0, c, activation) for _ in range(settings.residual_blocks[0])]
        self.s0 = nn.Sequential(*s0)
        channels = [c]
        for stage in (1, 2, 3):
            blocks: list[nn.Module] = []
            for stride in settings.stage_strides[stage]:
                blocks += [self._residual(settings, stage, c, activation)
                           for _ in range(settings.residual_blocks[stage])]
                blocks += self._growing(settings, stage, c, stride, activation)
                c = blocks[-1].out_channels
            setattr(self, f's{stage}', nn.Sequential(*blocks))
            channels.append(c)
        self.channels = tuple(channels)

    @staticmethod
    def _residual(settings: JetSegProfile, stage: int, width: int, activation: str) -> JetBlock:
        return JetBlock(width, width, width, settings.stage_kernels[stage], settings.square_kernel, 1,
                        settings.stage_attention[stage], activation)

    @staticmethod
    def _growing(settings: JetSegProfile, stage: int, in_ch: int, stride: int,
                 activation: str) -> list[JetBlock]:
        out_ch = settings.grown_channels(stage, in_ch)
        return [JetBlock(in_ch, settings.expand_channels(in_ch), out_ch, settings.stage_kernels[stage],
                         settings.square_kernel, stride, settings.stage_attention[stage], activation)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.s0(x)
        f1 = self.s1(f0)
        f2 = self.s2(f1)
        f3 = self.s3(f2)
        return [f0, f1, f2, f3]


class DSConv(nn.Module):
    """3x3 depthwise -> BN -> act -> 1x1 -> BN -> act: the decoder's cheap 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, activation: str = 'reu') -> None:
        super().__init__()
        self.depthwise = ConvBnAct(in_channels, in_channels, 3, groups=in_channels, activation=activation)
        self.pointwise = ConvBnAct(in_channels, out_channels, 1, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class JetSegDecoder(nn.Module):
    """RegSeg decoder26 layout: deep + middle heads summed, refined, upsampled, joined with the shallow head.

    Every upsampling goes to the skip's exact size, so odd input sizes work.
    """

    def __init__(self, shallow_channels: int, mid_channels: int, deep_channels: int, width: int,
                 shallow_width: int, num_classes: int, activation: str = 'reu') -> None:
        super().__init__()
        half = width // 2
        self.head_deep = ConvBnAct(deep_channels, width, 1, activation=activation)
        self.head_mid = ConvBnAct(mid_channels, width, 1, activation=activation)
        self.head_shallow = ConvBnAct(shallow_channels, shallow_width, 1, activation=activation)
        self.fuse_mid = DSConv(width, width, activation)
        self.fuse_shallow = DSConv(width + shallow_width, half, activation)
        self.classifier = nn.Conv2d(half, num_classes, 1)

    def forward(self, shallow: torch.Tensor, mid: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        m = self.head_mid(mid)
        d = F.interpolate(self.head_deep(deep), size=m.shape[-2:], mode='bilinear', align_corners=False)
        m = self.fuse_mid(m + d)
        s = self.head_shallow(shallow)
        m = F.interpolate(m, size=s.shape[-2:], mode='bilinear', align_corners=False)
        return self.classifier(self.fuse_shallow(torch.cat([m, s], dim=1)))


class JetSeg(nn.Module):
    """JetSeg network: logits N x num_classes x H x W for an N x 3 x H x W input (H, W >= 64)."""

    def __init__(self, settings: JetSegProfile, num_classes: int, activation: str = 'reu') -> None:
        super().__init__()
        if settings.decoder_stride not in (2, 4):
            raise ValueError(f'decoder_stride must be 2 or 4, got {settings.decoder_stride}')
        make_activation(activation)  # validates the name
        self.profile: str = settings.name
        self.settings = settings
        self.num_classes: int = num_classes
        self.activation: str = activation.lower()
        self.encoder = JetNet(settings, self.activation)
        ch = self.encoder.channels
        self._shallow_index = 0 if settings.decoder_stride == 2 else 1
        self.decoder = JetSegDecoder(ch[self._shallow_index], ch[2], ch[3], settings.decoder_width,
                                     settings.shallow_head_channels(), num_classes, self.activation)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv1d)):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.coarse_logits(x), size=x.shape[-2:], mode='bilinear', align_corners=False)

    def coarse_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The logits before the final upsampling, at 1/decoder_stride of the input size.

        Inference decides classes from these (:func:`jetseg_core.inference.upsampled_labels`) and never
        builds the full-size C-channel logits.
        """
        if not _is_exporting():
            if x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f'JetSeg expects an N x 3 x H x W tensor, got shape {tuple(x.shape)}')
            if x.shape[-2] < MIN_INPUT_SIDE or x.shape[-1] < MIN_INPUT_SIDE:
                raise ValueError(f'JetSeg input must be at least {MIN_INPUT_SIDE}x{MIN_INPUT_SIDE} pixels, '
                                 f'got {x.shape[-2]}x{x.shape[-1]}')
        feats = self.encoder(x)
        return self.decoder(feats[self._shallow_index], feats[2], feats[3])


def build_from_profile(settings: JetSegProfile, num_classes: int, activation: str = 'reu') -> JetSeg:
    """Build from a profile object (e.g. a ``dataclasses.replace`` variant of a named profile)."""
    num_classes = check_num_classes(num_classes)
    if not isinstance(activation, str) or activation.lower() not in ACTIVATIONS:
        raise ValueError(f'unknown activation {activation!r}; valid activations: {", ".join(ACTIVATIONS)}')
    return JetSeg(settings, num_classes, activation)


def build_model(profile: str, num_classes: int, activation: str = 'reu', **overrides: object) -> JetSeg:
    """Build JetSeg for a named profile ('nano', 'agx', 'workstation').

    ``overrides`` replace profile fields (e.g. ``decoder_stride=2`` for the authors-like decoder).
    """
    settings = get_profile(profile)
    if overrides:
        try:
            settings = dataclasses.replace(settings, **overrides)
        except TypeError as exc:
            raise ValueError(f'bad profile override: {exc}') from None
    return build_from_profile(settings, num_classes, activation)
