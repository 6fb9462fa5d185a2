"""Building blocks of JetSeg, named after the paper: activations, JetConv, attention, JetBlock.

Every conv that is followed by a BatchNorm registers the two as consecutive
children (``conv`` then ``bn``) so :func:`jetseg_core.fuse.fold_batchnorm` can fold them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Dilation of the asymmetric depthwise pair for each kernel size (authors' rule, never 0).
_DILATION_FOR_KERNEL = {1: 1, 3: 1, 5: 2, 7: 3}


class _REUWithGradient(torch.autograd.Function):
    """REU whose backward is one expression: d/dx = e * (1 + m), with m = min(x, 0), e = exp(m).

    Autograd's own backward of ``x * exp(min(x, 0))`` walks the mul, exp and clamp nodes (about
    five passes over the tensor and their temporaries); this is two.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        m = torch.clamp(x, max=0.0)
        e = torch.exp(m)
        ctx.save_for_backward(m, e)
        return x * e

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        m, e = ctx.saved_tensors
        return grad * torch.addcmul(e, e, m)


class REU(nn.Module):
    """REU(x) = x for x > 0, x * exp(x) otherwise.

    Written as ``x * exp(min(x, 0))``: equal to REU, one fused-friendly expression,
    and exp never sees a large argument (no slow path, no overflow). While gradients are
    recorded on the CPU it runs with a hand-written backward (same values); inference, tracing,
    export and training on other devices see the plain expression (the hand-written backward was
    measured on CPUs only, so CUDA keeps autograd's).
    """

    #: Switch for benchmarks and tests: False leaves the backward to autograd.
    fast_training = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast_training and x.requires_grad and x.device.type == 'cpu':
            return _REUWithGradient.apply(x)
        return x * torch.exp(torch.clamp(x, max=0.0))


class TanhExp(nn.Module):
    """TanhExp(x) = x * tanh(exp(x)); described in the paper as an alternative to REU.

    exp is clamped at 10 where tanh(exp(x)) is already 1 (and exp fits float16), which avoids
    inf * 0 = NaN in the backward pass for large inputs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(torch.exp(torch.clamp(x, max=10.0)))


def make_activation(name: str) -> nn.Module:
    """Activation module by name ('reu' or 'tanhexp')."""
    key = name.lower() if isinstance(name, str) else name
    if key == 'reu':
        return REU()
    if key == 'tanhexp':
        return TanhExp()
    raise ValueError(f"unknown activation {name!r}; valid activations: 'reu', 'tanhexp'")


def group_count(in_channels: int, out_channels: int) -> int:
    """Groups of a grouped 1x1 conv: the common divisor closest to the mean of all common divisors.

    Ties go to the smaller divisor (denser connections).
    """
    divisors = [d for d in range(1, min(in_channels, out_channels) + 1)
                if in_channels % d == 0 and out_channels % d == 0]
    mean = sum(divisors) / len(divisors)
    return min(divisors, key=lambda d: (abs(d - mean), d))


def dilation_for_kernel(kernel: int) -> int:
    """Dilation of the asymmetric depthwise pair: 1/2/3 for kernel 3/5/7."""
    try:
        return _DILATION_FOR_KERNEL[kernel]
    except KeyError:
        raise ValueError(f'JetConv kernel must be one of 1, 3, 5, 7, got {kernel}') from None


class ConvBnAct(nn.Module):
    """conv -> BN -> activation (the activation is optional); the unit BN folding expects."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1, activation: str | None = 'reu') -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = make_activation(activation) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ChannelShuffle(nn.Module):
    """Interleave channels across the groups of the preceding grouped conv (ShuffleNet)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return x
        n, c, h, w = x.shape
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def spaced_kernel(weight: torch.Tensor, dilation: int, dim: int) -> torch.Tensor:
    """``weight`` of a conv dilated along ``dim`` (2: height, 3: width) as an undilated kernel
    with ``dilation - 1`` zeros between its taps: the same sums, and differentiable, so the
    gradient reaches the compact taps."""
    if dilation == 1:
        return weight
    k = weight.shape[dim]
    taps = weight.movedim(dim, -1).unsqueeze(-1)  # ..., k, 1
    gaps = taps.new_zeros(*taps.shape[:-1], dilation - 1)
    spaced = torch.cat([taps, gaps], dim=-1).flatten(-2)[..., :(k - 1) * dilation + 1]
    return spaced.movedim(-1, dim)


def width_subgrid_conv(x: torch.Tensor, weight: torch.Tensor, dilation: int, groups: int,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1xK conv dilated by ``dilation`` along the width with 'same' padding, computed as an
    undilated 1xK conv on the ``dilation`` interleaved column sub-grids of ``x``.

    Column ``i * d + r`` only ever meets columns ``r (mod d)``, so each sub-grid is an ordinary
    undilated conv; the width is zero-padded to a multiple of ``d`` (zeros, as the conv's own
    padding) and cropped back.
    """
    n, c, h, w = x.shape
    d, k = dilation, weight.shape[-1]
    padded = -(-w // d) * d
    if padded != w:
        x = F.pad(x, (0, padded - w))
    grids = x.reshape(n, c, h, padded // d, d).permute(0, 4, 1, 2, 3).reshape(n * d, c, h, padded // d)
    y = F.conv2d(grids, weight, bias, padding=(0, (k - 1) // 2), groups=groups)
    y = y.reshape(n, d, -1, h, padded // d).permute(0, 2, 3, 4, 1).reshape(n, -1, h, padded)
    return y[..., :w] if padded != w else y


class DilatedDepthwiseConv(nn.Conv2d):
    """A depthwise Kx1 or 1xK conv dilated along its long side ('same' padding, stride 1).

    The parameters and the outputs are those of ``nn.Conv2d``; only the training path on CPU
    differs. There PyTorch's backward for dilated depthwise convs is the slow generic one, so
    while gradients are recorded the conv runs in an exactly equal undilated form, each picked
    by measurement (``scripts/benchmark_training.py``): along the height, a kernel with zeros
    between the taps; along the width (where oneDNN's long 1xN kernel is slow), an undilated
    conv over interleaved column sub-grids. Inference, tracing and export see the plain conv.
    """

    #: Switch for benchmarks and tests: False runs the plain dilated conv in training too.
    fast_training = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.fast_training and torch.is_grad_enabled() and x.device.type == 'cpu'):
            return super().forward(x)
        dh, dw = self.dilation
        if dh > 1:
            return F.conv2d(x, spaced_kernel(self.weight, dh, 2), self.bias, padding=self.padding,
                            groups=self.groups)
        if dw > 1:
            return width_subgrid_conv(x, self.weight, dw, self.groups, self.bias)
        return super().forward(x)


class JetConv(nn.Module):
    """The paper's JetConv: depthwise Nx1 then 1xN (dilated), square depthwise, grouped pointwise.

    The square depthwise conv carries the stride, so downsampling sees every pixel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, square_kernel: int = 3,
                 stride: int = 1, activation: str = 'reu', inner_activation: bool = True) -> None:
        super().__init__()
        d = dilation_for_kernel(kernel)
        pad = d * (kernel - 1) // 2
        c = in_channels
        self.kernel = kernel
        self.dilation = d
        self.dw_vertical = DilatedDepthwiseConv(c, c, (kernel, 1), padding=(pad, 0), dilation=(d, 1),
                                                groups=c, bias=False)
        self.dw_horizontal = DilatedDepthwiseConv(c, c, (1, kernel), padding=(0, pad), dilation=(1, d),
                                                  groups=c, bias=False)
        self.dw_square = nn.Conv2d(c, c, square_kernel, stride, padding=square_kernel // 2, groups=c,
                                   bias=False)
        self.bn_dw = nn.BatchNorm2d(c)
        # No activation between depthwise and pointwise where the input is thin (the RGB stem).
        self.act = make_activation(activation) if inner_activation else nn.Identity()
        self.groups = group_count(in_channels, out_channels)
        self.pw = nn.Conv2d(in_channels, out_channels, 1, groups=self.groups, bias=False)
        self.bn_pw = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw_square(self.dw_horizontal(self.dw_vertical(x)))
        x = self.act(self.bn_dw(x))
        return self.bn_pw(self.pw(x))


class ChannelPool(nn.Module):
    """Mean and max over channels, stacked: the input of CBAM's spatial gate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)


class SpatialAttention(nn.Module):
    """SAM: a 7x7 conv over channel mean/max gives a per-pixel gate (CBAM's spatial part)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.pool = ChannelPool()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.conv(self.pool(x)))


class ChannelAttention(nn.Module):
    """CBAM's channel gate: a shared bottleneck MLP over global average and max pooling."""

    def __init__(self, channels: int, reduction: int = 8, activation: str = 'reu') -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.act = make_activation(activation)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(self.act(self.fc1(self.avg_pool(x))))
        mx = self.fc2(self.act(self.fc1(self.max_pool(x))))
        return x * self.gate(avg + mx)


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel gate, then spatial gate (used in S1)."""

    def __init__(self, channels: int, reduction: int = 8, activation: str = 'reu') -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction, activation)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class ECA(nn.Module):
    """Efficient Channel Attention: a 1-D conv across pooled channels, kernel from log2(C) (used in S3)."""

    def __init__(self, channels: int, gamma: int = 2, b: int = 1) -> None:
        super().__init__()
        k = int(abs(math.log2(channels) / gamma + b / gamma))
        k = k if k % 2 else k + 1
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        y = self.conv(self.pool(x).reshape(n, 1, c)).reshape(n, c, 1, 1)
        return x * self.gate(y)


def make_attention(kind: str | None, channels: int, activation: str = 'reu') -> nn.Module:
    """Attention module by name: 'cbam', 'sam', 'eca' or None (identity)."""
    if kind is None:
        return nn.Identity()
    if kind == 'cbam':
        return CBAM(channels, activation=activation)
    if kind == 'sam':
        return SpatialAttention()
    if kind == 'eca':
        return ECA(channels)
    raise ValueError(f"unknown attention {kind!r}; valid: 'cbam', 'sam', 'eca', None")


class JetBlock(nn.Module):
    """The paper's JetBlock: grouped 1x1 expand -> shuffle -> JetConv -> attention -> grouped 1x1 reduce.

    A residual add joins input and output when their shapes match (stride 1, same width);
    it is a plain out-of-place add so BN folding and graph exporters see ordinary ops.
    """

    def __init__(self, in_channels: int, expand_channels: int, out_channels: int, kernel: int,
                 square_kernel: int = 3, stride: int = 1, attention: str | None = None,
                 activation: str = 'reu') -> None:
        super().__init__()
        self.residual = stride == 1 and in_channels == out_channels
        self.out_channels = out_channels
        g_expand = group_count(in_channels, expand_channels)
        self.expand = ConvBnAct(in_channels, expand_channels, 1, groups=g_expand, activation=activation)
        self.shuffle = ChannelShuffle(g_expand)
        self.jetconv = JetConv(expand_channels, expand_channels, kernel, square_kernel, stride, activation)
        self.attention = make_attention(attention, expand_channels, activation)
        self.act = make_activation(activation)
        self.reduce = ConvBnAct(expand_channels, out_channels, 1,
                                groups=group_count(expand_channels, out_channels), activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shuffle(self.expand(x))
        y = self.act(self.attention(self.jetconv(y)))
        y = self.reduce(y)
        return x + y if self.residual else y


class JetStem(nn.Module):
    """S0 as in the authors' code: a JetConv straight on the image (stride 2), then BN and activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, square_kernel: int = 3,
                 activation: str = 'reu') -> None:
        super().__init__()
        self.jetconv = JetConv(in_channels, out_channels, kernel, square_kernel, 2, activation,
                               inner_activation=False)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.jetconv(x))
