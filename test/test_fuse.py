"""Inference rewrites (BN folding, the CPU rewrites): same predictions, original untouched."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from jetseg_core.fuse import (
    REUExp2,
    densify_grouped_pointwise,
    exp2_activations,
    fold_batchnorm,
    fold_channel_shuffle,
    rewrite_for_cpu,
    undilate_horizontal_depthwise,
)
from jetseg_core.layers import REU, ChannelShuffle, TanhExp
from jetseg_core.model import build_model
from jetseg_core.profiles import PROFILES


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial statistics and affine terms, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)


@pytest.mark.parametrize('profile', sorted(PROFILES))
def test_folded_model_gives_same_labels_and_close_logits(profile: str) -> None:
    torch.manual_seed(0)
    model = build_model(profile, 11)
    _randomise_batchnorm(model)
    model.eval()
    folded = fold_batchnorm(model)
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    scale = ref.abs().max().item()
    assert torch.allclose(out, ref, atol=1e-4 * max(scale, 1.0), rtol=1e-4)
    # Labels match wherever the top two classes are not a float-rounding tie.
    top2 = ref.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4 * max(scale, 1.0)
    assert clear.float().mean() > 0.99
    assert torch.equal(out.argmax(1)[clear], ref.argmax(1)[clear])


def test_folded_model_has_no_batchnorm_and_original_is_untouched() -> None:
    model = build_model('nano', 11).train()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert not folded.training
    assert model.training
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn > 0
    assert sum(p.numel() for p in folded.parameters()) < sum(p.numel() for p in model.parameters())


def test_folding_keeps_an_existing_conv_bias() -> None:
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, bias=True), nn.BatchNorm2d(5))
    _randomise_batchnorm(net, seed=3)
    net.eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        ref = net(x)
        out = fold_batchnorm(net)(x)
    assert torch.allclose(out, ref, atol=1e-5)


def test_batchnorm_without_a_preceding_conv_is_reported() -> None:
    net = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match='cannot fold BatchNorm.*: 1$'):
        fold_batchnorm(net)


def _grouped_pointwise(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) and m.groups > 1 and m.kernel_size == (1, 1) for m in model.modules())


def _width_dilated(model: nn.Module, min_channels: int = 1) -> int:
    return sum(isinstance(m, nn.Conv2d) and m.dilation[1] > 1 and m.in_channels >= min_channels
               for m in model.modules())


@pytest.mark.parametrize('profile', sorted(PROFILES))
def test_cpu_rewrites_give_the_same_logits(profile: str) -> None:
    torch.manual_seed(1)
    model = build_model(profile, 11)
    _randomise_batchnorm(model, seed=1)
    folded = fold_batchnorm(model.eval())
    assert _grouped_pointwise(folded) > 0 and _width_dilated(folded) > 0
    assert any(isinstance(m, ChannelShuffle) and m.groups > 1 for m in folded.modules())
    rewritten = rewrite_for_cpu(fold_batchnorm(model))
    assert _grouped_pointwise(rewritten) == 0 and _width_dilated(rewritten, min_channels=4) == 0
    assert not any(isinstance(m, ChannelShuffle | REU) for m in rewritten.modules())
    assert any(isinstance(m, REUExp2) for m in rewritten.modules())
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        ref, out = folded(x), rewritten(x)
    assert torch.allclose(out, ref, atol=1e-4 * max(ref.abs().max().item(), 1.0), rtol=1e-4)


def test_densified_conv_keeps_each_group_apart() -> None:
    conv = nn.Conv2d(6, 4, 1, groups=2, bias=True)
    net = densify_grouped_pointwise(nn.Sequential(conv))
    dense = net[0]
    assert dense.groups == 1 and dense.weight.shape == (4, 6, 1, 1)
    # Output channels 0-1 read input channels 0-2 only; channels 2-3 read 3-5 only.
    assert torch.count_nonzero(dense.weight[:2, 3:]) == 0 and torch.count_nonzero(dense.weight[2:, :3]) == 0
    x = torch.randn(1, 6, 5, 5)
    with torch.no_grad():
        assert torch.allclose(dense(x), conv(x), atol=1e-6)


def test_shuffle_stays_where_the_expand_conv_is_still_grouped() -> None:
    model = fold_batchnorm(build_model('nano', 11))
    fold_channel_shuffle(model)  # grouped expand convs: nothing it can fold
    assert any(isinstance(m, ChannelShuffle) and m.groups > 1 for m in model.modules())


def test_undilated_conv_holds_the_taps_with_zeros_between() -> None:
    conv = nn.Conv2d(4, 4, (1, 5), padding=(0, 4), dilation=(1, 2), groups=4, bias=False)
    vertical = nn.Conv2d(4, 4, (5, 1), padding=(4, 0), dilation=(2, 1), groups=4, bias=False)
    rgb = nn.Conv2d(3, 3, (1, 5), padding=(0, 4), dilation=(1, 2), groups=3, bias=False)
    net = undilate_horizontal_depthwise(nn.Sequential(conv, vertical, rgb))
    plain = net[0]
    assert plain.kernel_size == (1, 9) and plain.dilation == (1, 1) and plain.padding == (0, 4)
    assert torch.equal(plain.weight[..., ::2], conv.weight)
    assert torch.count_nonzero(plain.weight[..., 1::2]) == 0
    assert net[1] is vertical  # dilation along the height is fast already: left alone
    assert net[2] is rgb  # so is dilation on fewer than 4 channels
    x = torch.randn(1, 4, 7, 11)
    with torch.no_grad():
        assert torch.allclose(plain(x), conv(x), atol=1e-6)


@pytest.mark.parametrize('activation', [REU, TanhExp])
def test_exp2_activations_compute_the_same_function(activation: type) -> None:
    holder = nn.Sequential(nn.Identity(), activation())
    exp2_activations(holder)
    assert not isinstance(holder[1], activation) and isinstance(holder[0], nn.Identity)
    x = torch.cat([torch.linspace(-120.0, 60.0, 100_001), torch.tensor([0.0, -0.0, 1e-30, -1e-30])])
    ref, out = activation()(x), holder[1](x)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-30)
    x.requires_grad_(True)
    holder[1](x).sum().backward()  # still differentiable, with finite gradients everywhere
    assert torch.isfinite(x.grad).all()
