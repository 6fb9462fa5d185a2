import time

import numpy as np
import pytest
import torch

from jetseg_core.data.synthetic import SyntheticScenes, generate_scene, scene_seed
from jetseg_core.palettes import CAMVID11


def test_same_seed_renders_identical_scene():
    a_rgb, a_lab = generate_scene(7, (120, 160))
    b_rgb, b_lab = generate_scene(7, (120, 160))
    assert np.array_equal(a_rgb, b_rgb) and np.array_equal(a_lab, b_lab)


def test_different_seeds_render_different_scenes():
    a_rgb, a_lab = generate_scene(1, (120, 160))
    b_rgb, b_lab = generate_scene(2, (120, 160))
    assert not np.array_equal(a_lab, b_lab)
    assert np.abs(a_rgb.astype(int) - b_rgb.astype(int)).mean() > 10


@pytest.mark.parametrize('size', [(64, 64), (97, 211), (360, 480), (240, 135)])
def test_requested_size_and_types_are_honoured(size):
    rgb, lab = generate_scene(3, size)
    assert rgb.shape == (*size, 3) and rgb.dtype == np.uint8
    assert lab.shape == size and lab.dtype == np.uint8
    assert lab.max() < CAMVID11.num_classes


def test_every_camvid11_class_appears_over_twenty_scenes():
    seen = np.zeros(CAMVID11.num_classes, bool)
    for i in range(20):
        _, lab = generate_scene(scene_seed(0, i), (120, 160))
        seen |= np.bincount(lab.ravel(), minlength=CAMVID11.num_classes) > 0
    missing = [CAMVID11.class_names[i] for i in np.flatnonzero(~seen)]
    assert not missing, f'classes never drawn: {missing}'


def test_label_edges_coincide_with_image_edges():
    # Image and labels are drawn through the same masks, so a change of label is (almost always)
    # a change of colour, while most pixels inside a region change far less.
    edge_diff, flat_diff = [], []
    for seed in range(4):
        rgb, lab = generate_scene(seed, (180, 240))
        diff = np.abs(rgb[:, 1:].astype(int) - rgb[:, :-1].astype(int)).sum(axis=2)
        change = lab[:, 1:] != lab[:, :-1]
        edge_diff.append(np.median(diff[change]))
        flat_diff.append(np.median(diff[~change]))
    assert np.mean(edge_diff) > 3 * np.mean(flat_diff)


def test_road_is_below_sky_in_every_scene():
    for seed in range(5):
        _, lab = generate_scene(seed, (120, 160))
        sky_rows = np.nonzero((lab == CAMVID11.index('Sky')).any(axis=1))[0]
        road_rows = np.nonzero((lab == CAMVID11.index('Road')).any(axis=1))[0]
        assert sky_rows.size and road_rows.size
        assert sky_rows.max() < road_rows.max() and road_rows.min() > sky_rows.min()


def test_scene_renders_fast_enough_for_live_demo():
    generate_scene(0)
    times = []
    for seed in range(5):
        start = time.perf_counter()
        generate_scene(seed, (360, 480))
        times.append(time.perf_counter() - start)
    # About 20 ms on one free core; a generous bound since test machines are shared.
    assert min(times) < 0.1


def test_dataset_items_are_stable_and_use_transform():
    ds = SyntheticScenes(3, size=(64, 96), seed=5)
    assert len(ds) == 3
    rgb, lab = ds[1]
    assert rgb.shape == (64, 96, 3) and lab.shape == (64, 96)
    assert np.array_equal(ds[1][1], SyntheticScenes(3, size=(64, 96), seed=5)[1][1])
    assert not np.array_equal(ds[0][1], ds[1][1])
    assert not np.array_equal(ds[0][1], SyntheticScenes(3, size=(64, 96), seed=6)[0][1])

    def to_tensors(image, labels):
        return torch.from_numpy(image).permute(2, 0, 1).float(), torch.from_numpy(labels).long()

    image, target = SyntheticScenes(2, (64, 96), seed=5, transform=to_tensors)[1]
    assert image.shape == (3, 64, 96) and target.dtype == torch.long
    assert torch.equal(target, torch.from_numpy(lab).long())
    with pytest.raises(IndexError):
        ds[3]
