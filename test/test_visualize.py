"""Colour masks and overlays."""
from __future__ import annotations

import numpy as np
import pytest

from jetseg_core.palettes import CAMVID11
from jetseg_core.visualize import blend, colorize


def test_colorize_paints_each_class_in_its_palette_colour():
    labels = np.arange(11, dtype=np.uint8).reshape(1, 11).repeat(3, axis=0)
    rgb = colorize(labels, CAMVID11)
    assert rgb.shape == (3, 11, 3) and rgb.dtype == np.uint8
    for k in range(11):
        assert (rgb[:, k] == CAMVID11.colors[k]).all()


@pytest.mark.parametrize('dtype', [np.uint8, np.int64, np.int32])
def test_labels_outside_the_palette_are_black(dtype):
    labels = np.array([[0, 10, 11], [200, 255, 3]], dtype=dtype)
    rgb = colorize(labels, CAMVID11.colors)
    assert (rgb[0, 0] == CAMVID11.colors[0]).all() and (rgb[1, 2] == CAMVID11.colors[3]).all()
    assert (rgb[0, 2] == 0).all() and (rgb[1, 0] == 0).all() and (rgb[1, 1] == 0).all()


def test_negative_labels_are_black_and_lists_work_as_palettes():
    rgb = colorize(np.array([[-1, 1]]), [[10, 20, 30], [40, 50, 60]])
    assert rgb.tolist() == [[[0, 0, 0], [40, 50, 60]]]


def test_colorize_rejects_non_label_arrays():
    with pytest.raises(ValueError, match='HxW'):
        colorize(np.zeros((2, 2, 3), np.uint8), CAMVID11)
    with pytest.raises(ValueError, match='integers'):
        colorize(np.zeros((2, 2), np.float32), CAMVID11)


def test_blend_matches_float_reference_within_one_level():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (31, 17, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, (31, 17, 3), dtype=np.uint8)
    for alpha in (0.0, 0.3, 0.5, 0.77, 1.0):
        out = blend(rgb, mask, alpha)
        ref = (1 - alpha) * rgb.astype(np.float64) + alpha * mask
        assert out.dtype == np.uint8 and out.shape == rgb.shape
        assert np.abs(out.astype(np.float64) - ref).max() <= 1.0
    assert np.array_equal(blend(rgb, mask, 0.0), rgb)
    assert np.array_equal(blend(rgb, mask, 1.0), mask)


def test_blend_of_extremes_does_not_overflow():
    white = np.full((4, 4, 3), 255, np.uint8)
    assert (blend(white, white, 0.5) == 255).all()
    assert (blend(white, np.zeros_like(white), 0.5) == 128).all()


def test_blend_rejects_mismatched_inputs():
    a = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match='one size'):
        blend(a, np.zeros((4, 5, 3), np.uint8), 0.5)
    with pytest.raises(ValueError, match='alpha'):
        blend(a, a, 1.5)
    with pytest.raises(ValueError, match='uint8'):
        blend(a.astype(np.float32), a, 0.5)
