"""Fold BatchNorm into the preceding convolution for inference.

A folded model runs one conv (with bias) where it ran conv + BN: fewer kernels,
fewer memory passes, and the same outputs up to float rounding.
"""
from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

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
