import numpy as np
import pytest

from jetseg_core.palettes import CAMVID11, CAMVID32, CITYSCAPES19, get_palette


@pytest.mark.parametrize('palette, size', [(CAMVID11, 11), (CAMVID32, 32), (CITYSCAPES19, 19)])
def test_palettes_have_expected_size_and_unique_colours(palette, size):
    assert palette.num_classes == size == len(palette.class_names) == len(palette.colors)
    assert palette.colors.dtype == np.uint8 and palette.colors.shape == (size, 3)
    assert len({tuple(c) for c in palette.colors.tolist()}) == size
    assert len(set(palette.class_names)) == size


def test_camvid11_follows_segnet_order_and_colours():
    assert CAMVID11.class_names[:4] == ('Sky', 'Building', 'Pole', 'Road')
    assert CAMVID11.class_names[-1] == 'Bicyclist'
    assert CAMVID11.colors[CAMVID11.index('road')].tolist() == [128, 64, 128]
    assert CAMVID11.colors[CAMVID11.index('Pavement')].tolist() == [60, 40, 222]


def test_camvid32_and_cityscapes_use_official_colours():
    assert CAMVID32.colors[CAMVID32.index('Sidewalk')].tolist() == [0, 0, 192]
    assert CAMVID32.colors[CAMVID32.index('Void')].tolist() == [0, 0, 0]
    assert CITYSCAPES19.colors[CITYSCAPES19.index('car')].tolist() == [0, 0, 142]
    assert CITYSCAPES19.class_names[18] == 'bicycle'


def test_palette_colours_are_read_only():
    with pytest.raises(ValueError):
        CAMVID11.colors[0, 0] = 1


def test_get_palette_finds_aliases_and_rejects_unknown_names():
    assert get_palette('CamVid') is CAMVID11
    assert get_palette('cityscapes') is CITYSCAPES19
    assert get_palette('camvid32') is CAMVID32
    with pytest.raises(ValueError, match='unknown palette.*camvid11'):
        get_palette('pascal')
