"""Inference-time rewrites of a trained network that keep its outputs (up to float rounding).

- BatchNorm folded into the preceding convolution: one conv with bias instead of conv + BN;
- for CPU (:func:`rewrite_for_cpu`): grouped 1x1 convolutions made dense (block-diagonal
  weights), each JetBlock's channel shuffle folded into the expand conv's output order,
  width-dilated depthwise convs undilated, and the activations' exp computed as exp2: kernels
  PyTorch's CPU backend runs much faster.
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable

import torch
from torch import nn

from jetseg_core.layers import REU, ChannelShuffle, JetBlock, TanhExp

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` (eval statistics) into ``conv`` in place: W' = W * g/s, b' = (b - mean) * g/s + beta."""
    with torch.no_grad():
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
        scale = gamma / std
        conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * scale + beta
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
        else:
            conv.bias.copy_(new_bias)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, _CONVS) and isinstance(bn, _BATCHNORMS) and bn.track_running_stats
            and bn.running_mean is not None and conv.out_channels == bn.num_features)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Eval-mode copy of ``model`` with every BatchNorm folded into the conv registered just before it.

    JetSeg registers each conv and its BN as consecutive children in forward order, which
    is what makes the pairing here exact. Raises ValueError if a BN has no conv to fold into.
    """
    folded = copy.deepcopy(model).eval()
    for parent in list(folded.modules()):
        children = list(parent.named_children())
        for (_, first), (bn_name, second) in itertools.pairwise(children):
            if _foldable(first, second):
                fold_conv_bn(first, second)
                setattr(parent, bn_name, nn.Identity())
    leftover = [name for name, m in folded.named_modules() if isinstance(m, _BATCHNORMS)]
    if leftover:
        raise ValueError(f'cannot fold BatchNorm without a preceding conv: {", ".join(leftover)}')
    return folded


def _replace_modules(model: nn.Module, rebuild: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """Swap (in place) every submodule for which ``rebuild`` returns a replacement."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = rebuild(child)
            if new is not None:
                setattr(parent, name, new)
    return model


def _replace_convs(model: nn.Module, rebuild: Callable[[nn.Conv2d], nn.Conv2d | None]) -> nn.Module:
    """Swap (in place) every Conv2d for which ``rebuild`` returns a replacement."""
    return _replace_modules(model, lambda m: rebuild(m) if isinstance(m, nn.Conv2d) else None)


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, groups: int) -> nn.Conv2d:
    """An undilated conv with ``weight`` and everything else (bias, stride, padding, mode) of ``conv``."""
    new = nn.Conv2d(conv.in_channels, conv.out_channels, tuple(weight.shape[-2:]), conv.stride, conv.padding,
                    groups=groups, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    new = new.to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new.train(conv.training).requires_grad_(conv.weight.requires_grad)


def _dense_pointwise(conv: nn.Conv2d) -> nn.Conv2d | None:
    if conv.groups == 1 or conv.kernel_size != (1, 1) or conv.dilation != (1, 1):
        return None
    g = conv.groups
    in_per, out_per = conv.in_channels // g, conv.out_channels // g
    with torch.no_grad():
        weight = conv.weight.new_zeros(conv.out_channels, conv.in_channels, 1, 1)
        for i in range(g):  # group i: its outputs read only its own inputs
            weight[i * out_per:(i + 1) * out_per, i * in_per:(i + 1) * in_per] = \
                conv.weight[i * out_per:(i + 1) * out_per]
    return _conv_like(conv, weight, groups=1)


def densify_grouped_pointwise(model: nn.Module) -> nn.Module:
    """Replace every grouped 1x1 conv of ``model`` (in place) by a dense one with a block-diagonal weight.

    Same outputs; more multiply-adds on paper, but for JetSeg's narrow layers one small GEMM
    is far cheaper on CPU than PyTorch's grouped path (single-threaded it loops over the
    groups with a slice, a GEMM and a concat each).
    """
    return _replace_convs(model, _dense_pointwise)


def fold_channel_shuffle(model: nn.Module) -> nn.Module:
    """Fold each JetBlock's channel shuffle into the dense, BN-folded expand conv before it (in place).

    The activation between them is elementwise, so permuting the conv's output channels
    gives the shuffled tensor directly and saves a full copy of it per block. Blocks whose
    expand conv is still grouped or still has its BatchNorm are left as they are.
    """
    for block in model.modules():
        if not (isinstance(block, JetBlock) and isinstance(block.shuffle, ChannelShuffle)):
            continue
        conv = block.expand.conv
        if conv.groups != 1 or not isinstance(block.expand.bn, nn.Identity):
            continue
        # Output channel j of the shuffle is input channel order[j].
        order = block.shuffle(torch.arange(conv.out_channels, dtype=torch.float32).view(1, -1, 1, 1))
        order = order.flatten().long().to(conv.weight.device)
        with torch.no_grad():
            conv.weight.copy_(conv.weight[order])
            if conv.bias is not None:
                conv.bias.copy_(conv.bias[order])
        block.shuffle = nn.Identity()
    return model


# Below this many channels (the stem's RGB conv) oneDNN's dilated depthwise kernel is the faster one:
# 3 channels at 240x320, 1x7 dilated by 3: 646 us dilated, 823 us undilated; 4 channels at 120x160:
# 240 vs 203 us, and the undilated one pulls further ahead with every channel (16: 827 vs 173 us).
_MIN_UNDILATED_CHANNELS = 4


def _undilated_horizontal(conv: nn.Conv2d) -> nn.Conv2d | None:
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    if not (depthwise and conv.kernel_size[0] == 1 and conv.dilation[0] == 1 and conv.dilation[1] > 1
            and isinstance(conv.padding, tuple) and conv.in_channels >= _MIN_UNDILATED_CHANNELS):
        return None
    d, k = conv.dilation[1], conv.kernel_size[1]
    with torch.no_grad():
        weight = conv.weight.new_zeros(*conv.weight.shape[:3], (k - 1) * d + 1)
        weight[..., ::d] = conv.weight
    return _conv_like(conv, weight, groups=conv.groups)


def undilate_horizontal_depthwise(model: nn.Module) -> nn.Module:
    """Rewrite each depthwise 1xK conv dilated along the width by D (in place) as an undilated
    1x((K-1)D+1) conv whose kernel holds the K taps with zeros between them.

    The same sums, term for term; oneDNN's CPU depthwise kernel is slow for dilation along the
    width (5x for JetSeg's 1x7, dilation 3, on 16 channels at 120x160 in channels_last) and fast
    without it. Convs on fewer than 4 channels stay dilated: there the dilated kernel is faster.
    """
    return _replace_convs(model, _undilated_horizontal)


_LOG2_E = 1.0 / math.log(2.0)


class REUExp2(nn.Module):
    """:class:`~jetseg_core.layers.REU` with exp(x) computed as 2^(x log2 e)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.exp2(torch.clamp(x * _LOG2_E, max=0.0))


class TanhExpExp2(nn.Module):
    """:class:`~jetseg_core.layers.TanhExp` with exp(x) computed as 2^(x log2 e)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(torch.exp2(torch.clamp(x * _LOG2_E, max=10.0 * _LOG2_E)))


def exp2_activations(model: nn.Module) -> nn.Module:
    """Replace every REU and TanhExp of ``model`` (in place) by the same function computed with exp2.

    On CPU torch.exp is 3x slower than torch.exp2 (here, one thread, a 72x60x80 float tensor:
    291 vs 98 us), and REU's exp took ~12 % of the nano network's time. The values agree to
    ~1e-6 relative: the nano network runs 0.8-1.1 ms (7-10 %) faster per frame, and its labels
    differ at about one pixel of a 640x480 frame, where two classes tie.
    """
    swaps = {REU: REUExp2, TanhExp: TanhExpExp2}
    return _replace_modules(model, lambda m: swaps[type(m)]() if type(m) in swaps else None)


def rewrite_for_cpu(model: nn.Module, exp2: bool = True) -> nn.Module:
    """All the CPU rewrites above, in place, on a BN-folded model (the shuffle fold needs it).

    ``exp2=False`` leaves the activations alone: the graph exported to the inference engines
    (ONNX has no exp2 operator).
    """
    for rewrite in (densify_grouped_pointwise, fold_channel_shuffle, undilate_horizontal_depthwise):
        rewrite(model)
    if exp2:
        exp2_activations(model)
    return model
