"""The training paths (undilated forms of the dilated depthwise convs, REU's hand-written backward)
give plain autograd's outputs and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jetseg_core.layers import REU, DilatedDepthwiseConv, JetConv, spaced_kernel, width_subgrid_conv
from jetseg_core.model import build_model


def _plain_and_fast(conv: DilatedDepthwiseConv, x: torch.Tensor):
    """Output, input gradient and weight gradient of the plain conv and of the training path."""
    results = []
    for fast in (False, True):
        xi = x.clone().requires_grad_(True)
        conv.zero_grad()
        DilatedDepthwiseConv.fast_training = fast
        try:
            y = conv(xi)
        finally:
            DilatedDepthwiseConv.fast_training = True
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append((y.detach(), xi.grad, conv.weight.grad.clone()))
    return results


@pytest.mark.parametrize('kernel, dilation', [(3, 1), (5, 2), (7, 3)])
@pytest.mark.parametrize('along', ['height', 'width'])
# Sides that divide by the dilation and sides that do not.
@pytest.mark.parametrize('size', [(12, 17), (9, 8), (5, 3)])
def test_training_path_matches_the_dilated_conv(kernel, dilation, along, size):
    torch.manual_seed(kernel + dilation)
    pad = dilation * (kernel - 1) // 2
    shape, padding, dil = (((kernel, 1), (pad, 0), (dilation, 1)) if along == 'height'
                           else ((1, kernel), (0, pad), (1, dilation)))
    conv = DilatedDepthwiseConv(6, 6, shape, padding=padding, dilation=dil, groups=6, bias=True)
    x = torch.randn(2, 6, *size)
    (y0, gx0, gw0), (y1, gx1, gw1) = _plain_and_fast(conv, x)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx1, gx0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw1, gw0, rtol=1e-5, atol=1e-5)


def test_training_takes_the_undilated_forms_and_inference_the_plain_conv():
    conv = JetConv(8, 8, 7).train()
    x = torch.randn(1, 8, 16, 16, requires_grad=True)
    vertical = conv.dw_vertical(x)
    # Height: one conv whose saved kernel is the spaced one (7 taps, 2 zeros between each).
    assert tuple(vertical.grad_fn._saved_weight.shape) == (8, 1, 19, 1)
    # Width: the conv runs on the sub-grids, so the output comes out of their reshuffle.
    assert type(conv.dw_horizontal(x).grad_fn).__name__ != 'ConvolutionBackward0'
    with torch.no_grad():
        assert conv.dw_vertical(x).grad_fn is None
        plain = F.conv2d(x, conv.dw_horizontal.weight, padding=(0, 9), dilation=(1, 3), groups=8)
        torch.testing.assert_close(conv.dw_horizontal(x), plain)


def test_spaced_kernel_puts_the_taps_dilation_apart():
    w = torch.arange(1.0, 4.0).view(1, 1, 3, 1)
    assert spaced_kernel(w, 3, 2).flatten().tolist() == [1, 0, 0, 2, 0, 0, 3]
    assert spaced_kernel(w.transpose(2, 3), 2, 3).flatten().tolist() == [1, 0, 2, 0, 3]


def test_width_subgrid_conv_equals_a_width_dilated_conv_with_bias():
    x, w, b = torch.randn(2, 4, 5, 11), torch.randn(4, 1, 1, 5), torch.randn(4)
    torch.testing.assert_close(width_subgrid_conv(x, w, 2, 4, b),
                               F.conv2d(x, w, b, padding=(0, 4), dilation=(1, 2), groups=4))


def test_reu_backward_equals_autograds_and_inference_keeps_the_plain_expression():
    x = torch.cat([torch.linspace(-30, 5, 999), torch.zeros(1)]).double()
    outputs = []
    for fast in (False, True):
        xi = x.clone().requires_grad_(True)
        REU.fast_training = fast
        try:
            y = REU()(xi)
        finally:
            REU.fast_training = True
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype)).sum().backward()
        outputs.append((y.detach(), xi.grad, y.grad_fn.name()))
    (y0, g0, node0), (y1, g1, node1) = outputs
    assert node0 == 'MulBackward0' and node1 != node0  # the hand-written backward ran
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    torch.testing.assert_close(g1, g0, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(REU(), (torch.randn(20, dtype=torch.double, requires_grad=True),))
    with torch.no_grad():
        assert REU()(x.requires_grad_(True)).grad_fn is None


@pytest.mark.parametrize('profile', ['nano', 'agx'])
def test_a_training_step_gives_plain_autograds_gradients(profile):
    torch.manual_seed(0)
    model = build_model(profile, 5).train()
    x, y = torch.randn(2, 3, 64, 96), torch.randint(0, 5, (2, 64, 96))
    grads = []
    for fast in (False, True):
        DilatedDepthwiseConv.fast_training = REU.fast_training = fast
        try:
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
        finally:
            DilatedDepthwiseConv.fast_training = REU.fast_training = True
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5 * float(grads[0].abs().max()))


def test_other_devices_train_the_plain_layers():
    """The training paths are measured on the CPU only: elsewhere (CUDA) training records autograd's
    plain graph, as before they existed. The meta device stands in for a GPU: real tensors without data."""
    torch.manual_seed(0)
    conv = JetConv(8, 8, 7).train()
    reu = REU()
    for device, plain in (('cpu', False), ('meta', True)):
        conv.to(device)
        x = torch.randn(1, 8, 16, 16, device=device, requires_grad=True)
        vertical, horizontal = conv.dw_vertical(x), conv.dw_horizontal(x)
        assert (tuple(vertical.grad_fn._saved_weight.shape) == (8, 1, 7, 1)) == plain, device
        assert (horizontal.grad_fn.name() == 'ConvolutionBackward0') == plain, device
        assert (reu(x).grad_fn.name() == 'MulBackward0') == plain, device
