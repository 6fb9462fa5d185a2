"""JetSeg model: shapes at every size and profile, validation, and the paper's building rules."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jetseg_core.layers import (
    CBAM,
    ECA,
    REU,
    JetBlock,
    JetConv,
    SpatialAttention,
    TanhExp,
    dilation_for_kernel,
    group_count,
)
from jetseg_core.model import build_model
from jetseg_core.profiles import PROFILES

CAMVID_SIZES = [(512, 512), (360, 480), (480, 640), (720, 1280)]


def _forward_backward(model: nn.Module, batch: int, size: tuple[int, int], classes: int) -> None:
    model.zero_grad(set_to_none=True)
    out = model(torch.randn(batch, 3, *size))
    assert out.shape == (batch, classes, *size)
    out.float().square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f'parameters without finite gradient: {missing[:5]}'


@pytest.mark.parametrize('size', CAMVID_SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
def test_nano_trains_at_camvid_and_hd_sizes(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    _forward_backward(build_model('nano', 11), 1, size, 11)


def _same_rounding(size: tuple[int, int]) -> tuple[int, int]:
    """The smallest valid size whose sides leave the same remainders by 32 (every stride of the
    network rounds them the same way), so shapes break exactly where they would at ``size``."""
    return (64 + size[0] % 32, 64 + size[1] % 32)


@pytest.mark.parametrize('size', CAMVID_SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('profile', ['agx', 'workstation'])
def test_big_profiles_run_and_train_at_camvid_and_hd_sizes(profile: str, size: tuple[int, int]) -> None:
    """The authors' agx/workstation crash at these sizes (decoder channel mismatch). The full size
    runs forward; training (forward and backward) runs at a small size that rounds alike."""
    torch.manual_seed(0)
    model = build_model(profile, 11)
    _forward_backward(model, 1, _same_rounding(size), 11)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, *size)).shape == (1, 11, *size)


@pytest.mark.parametrize('profile', sorted(PROFILES))
@pytest.mark.parametrize(('size', 'classes', 'batch'),
                         [((97, 131), 2, 3), ((64, 64), 255, 1), ((65, 200), 19, 2)])
def test_odd_and_minimum_sizes_give_logits_of_input_size(profile: str, size: tuple[int, int], classes: int,
                                                          batch: int) -> None:
    torch.manual_seed(0)
    _forward_backward(build_model(profile, classes), batch, size, classes)


def test_tanhexp_model_trains_and_differs_from_reu_model() -> None:
    torch.manual_seed(0)
    reu = build_model('nano', 5)
    torch.manual_seed(0)
    tanhexp = build_model('nano', 5, activation='tanhexp')
    assert any(isinstance(m, TanhExp) for m in tanhexp.modules())
    assert not any(isinstance(m, REU) for m in tanhexp.modules())
    _forward_backward(tanhexp, 1, (96, 128), 5)
    x = torch.randn(1, 3, 96, 128)
    reu.eval()
    tanhexp.eval()
    with torch.no_grad():
        assert not torch.allclose(reu(x), tanhexp(x))


def test_model_reports_profile_and_num_classes() -> None:
    model = build_model('agx', 7)
    assert model.profile == 'agx'
    assert model.num_classes == 7
    assert model.decoder.classifier.out_channels == 7


def test_unknown_profile_is_rejected_with_the_valid_names() -> None:
    with pytest.raises(ValueError, match='agx, nano, workstation'):
        build_model('orin', 11)


@pytest.mark.parametrize('classes', [0, 1, 256, 11.0, '11', True])
def test_num_classes_outside_2_to_255_is_rejected(classes: object) -> None:
    with pytest.raises(ValueError, match='2..255'):
        build_model('nano', classes)  # type: ignore[arg-type]


def test_unknown_activation_is_rejected() -> None:
    with pytest.raises(ValueError, match='reu'):
        build_model('nano', 11, activation='relu')


@pytest.mark.parametrize('size', [(63, 128), (128, 32)])
def test_input_smaller_than_64_pixels_is_rejected(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match='at least 64x64'):
        build_model('nano', 11)(torch.zeros(1, 3, *size))


def test_reu_equals_its_definition_without_overflow() -> None:
    x = torch.tensor([-1000.0, -100.0, -88.5, -3.0, -0.5, 0.0, 0.5, 3.0, 100.0, 1000.0], requires_grad=True)
    expected = torch.where(x > 0, x, x * torch.exp(x))
    y = REU()(x)
    assert torch.allclose(y, expected.nan_to_num(0.0), atol=1e-6)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    # d/dx x*exp(x) = (1 + x) exp(x) below zero, 1 above.
    assert x.grad[3].item() == pytest.approx((1 - 3.0) * math.exp(-3.0), rel=1e-5)
    assert x.grad[-1].item() == pytest.approx(1.0)


def test_tanhexp_equals_its_definition_with_finite_gradients_for_large_inputs() -> None:
    x = torch.tensor([-50.0, -2.0, 0.0, 1.0, 5.0, 90.0, 1e4], requires_grad=True)
    y = TanhExp()(x)
    small = x.detach()[:5]
    assert torch.allclose(y[:5], small * torch.tanh(torch.exp(small)), atol=1e-6)
    assert torch.allclose(y[5:], x.detach()[5:])
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize(('cin', 'cout', 'groups'),
                         [(8, 16, 4), (16, 16, 8), (3, 8, 1), (48, 64, 8), (2, 2, 1), (12, 18, 3)])
def test_group_count_is_the_common_divisor_nearest_their_mean(cin: int, cout: int, groups: int) -> None:
    # (2, 2): divisors 1, 2, mean 1.5 is a tie -> the smaller; (12, 18): 1, 2, 3, 6, mean 3 -> 3.
    assert group_count(cin, cout) == groups


def test_jetconv_dilation_follows_kernel_and_is_never_zero() -> None:
    assert [dilation_for_kernel(k) for k in (3, 5, 7)] == [1, 2, 3]
    for profile in PROFILES:
        model = build_model(profile, 11)
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                assert min(m.dilation) >= 1
            if isinstance(m, JetConv):
                assert m.dw_vertical.kernel_size == (m.kernel, 1)
                assert m.dw_horizontal.kernel_size == (1, m.kernel)
                assert m.dw_vertical.dilation == (dilation_for_kernel(m.kernel), 1)
                assert m.dw_horizontal.dilation == (1, dilation_for_kernel(m.kernel))
                assert m.dw_vertical.groups == m.dw_vertical.in_channels  # depthwise


def test_jetconv_keeps_odd_sizes_and_halves_with_stride_two() -> None:
    for k in (3, 5, 7):
        conv = JetConv(8, 16, k, stride=1)
        assert conv(torch.randn(1, 8, 17, 23)).shape == (1, 16, 17, 23)
        conv = JetConv(8, 16, k, stride=2)
        assert conv(torch.randn(1, 8, 17, 23)).shape == (1, 16, 9, 12)


def test_attention_sits_in_the_papers_stages() -> None:
    enc = build_model('agx', 11).encoder
    assert not any(isinstance(m, (CBAM, ECA, SpatialAttention)) for m in enc.s0.modules())
    for block in enc.s1:
        assert isinstance(block.attention, CBAM)
    for block in enc.s2:
        assert isinstance(block.attention, SpatialAttention)
    for block in enc.s3:
        assert isinstance(block.attention, ECA)


def test_nano_layout_follows_the_channel_rule_and_residual_counts() -> None:
    model = build_model('nano', 11)
    assert model.encoder.channels == (8, 16, 48, 64)  # S0 b, S1 +b, S2 +2b twice, S3 x2 capped at 64
    assert PROFILES['nano'].stage_channels() == model.encoder.channels
    residual = [sum(isinstance(b, JetBlock) and b.residual for b in getattr(model.encoder, f's{i}'))
                for i in range(4)]
    # One residual block before each of the two growing blocks of S2 and S3; the last S3 block
    # keeps 64 channels at stride 1, so it is residual too.
    assert residual == [0, 0, 2, 3]


def test_encoder_strides_are_2_4_8_16_and_odd_sizes_round_up() -> None:
    model = build_model('nano', 11)
    feats = model.encoder(torch.randn(1, 3, 97, 131))
    assert [tuple(f.shape[-2:]) for f in feats] == [(49, 66), (25, 33), (13, 17), (7, 9)]


def test_residual_block_leaves_its_input_untouched() -> None:
    block = JetBlock(16, 16, 16, kernel=5, attention='sam').eval()
    x = torch.randn(2, 16, 20, 24)
    before = x.clone()
    with torch.no_grad():
        y = block(x)
    assert block.residual
    assert torch.equal(x, before)
    assert not torch.allclose(y, x)
