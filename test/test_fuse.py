"""BatchNorm folding: same predictions, no BN left, original untouched."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from jetseg_core.fuse import fold_batchnorm
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
