import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jetseg_core.data.transforms import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    EvalTransform,
    TrainTransform,
)


def _blocky_pair(h: int = 96, w: int = 128, block: int = 16, seed: int = 0):
    """Labels in square blocks; the red channel encodes the label so alignment can be checked."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 11, (h // block + 1, w // block + 1))
    labels = np.kron(grid, np.ones((block, block), int))[:h, :w].astype(np.uint8)
    rgb = np.stack([labels * 20, np.full_like(labels, 100), np.full_like(labels, 50)],
                   axis=2).astype(np.uint8)
    return rgb, labels


def _decode_red(image: torch.Tensor) -> torch.Tensor:
    red = image[0] * DEFAULT_STD[0] + DEFAULT_MEAN[0]
    return torch.round(red * 255 / 20).long()


def test_train_transform_outputs_network_size_tensors():
    rgb, labels = _blocky_pair(60, 200)
    image, target = TrainTransform((64, 96), generator=torch.Generator().manual_seed(0))(rgb, labels)
    assert image.shape == (3, 64, 96) and image.dtype == torch.float32
    assert target.shape == (64, 96) and target.dtype == torch.long


def test_train_transform_is_reproducible_with_a_seeded_generator():
    rgb, labels = _blocky_pair()
    a = TrainTransform((64, 64), generator=torch.Generator().manual_seed(3))(rgb, labels)
    b = TrainTransform((64, 64), generator=torch.Generator().manual_seed(3))(rgb, labels)
    c = TrainTransform((64, 64), generator=torch.Generator().manual_seed(4))(rgb, labels)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_geometry_keeps_image_and_labels_aligned_and_invents_no_class():
    rgb, labels = _blocky_pair()
    transform = TrainTransform((64, 80), jitter=False, generator=torch.Generator().manual_seed(1))
    for _ in range(6):
        image, target = transform(rgb, labels)
        valid = target != 255
        assert set(target[valid].unique().tolist()) <= set(np.unique(labels).tolist())
        # Inside blocks (3x3 neighbourhood of one label, away from interpolation blur at borders)
        # the colour-decoded class equals the label.
        t = target[None, None].float()
        interior = (F.max_pool2d(t, 3, 1, 1) == -F.max_pool2d(-t, 3, 1, 1))[0, 0] & valid
        assert interior.sum() > 100
        assert torch.equal(_decode_red(image)[interior], target[interior])


def test_zoomed_out_crops_are_padded_with_ignore_labels_and_mean_colour():
    rgb, labels = _blocky_pair(64, 64)
    transform = TrainTransform((64, 64), scale=(0.5, 0.5), hflip=False, jitter=False,
                               generator=torch.Generator().manual_seed(0))
    image, target = transform(rgb, labels)
    padded = target == 255
    assert padded.sum().item() == 64 * 64 - 32 * 32
    assert torch.all(image[:, padded] == 0)  # zero after normalisation is the mean colour
    assert not torch.any(image[:, ~padded] == 0)


def test_horizontal_flip_happens_for_some_seeds_only():
    rgb, labels = _blocky_pair(64, 64)
    flipped, kept = 0, 0
    for seed in range(12):
        t = TrainTransform((64, 64), scale=(1.0, 1.0), jitter=False,
                           generator=torch.Generator().manual_seed(seed))
        _, target = t(rgb, labels)
        if torch.equal(target, torch.from_numpy(labels).long()):
            kept += 1
        elif torch.equal(target, torch.from_numpy(labels[:, ::-1].copy()).long()):
            flipped += 1
    assert flipped > 0 and kept > 0 and flipped + kept == 12


def test_colour_jitter_changes_colours_within_range_but_not_labels():
    rgb, labels = _blocky_pair(64, 64)
    plain = TrainTransform((64, 64), scale=(1.0, 1.0), hflip=False, jitter=False)(rgb, labels)
    jittered = TrainTransform((64, 64), scale=(1.0, 1.0), hflip=False,
                              generator=torch.Generator().manual_seed(5))(rgb, labels)
    assert torch.equal(plain[1], jittered[1])
    assert (plain[0] - jittered[0]).abs().mean() > 0.05
    raw = jittered[0] * torch.tensor(DEFAULT_STD).view(3, 1, 1) + torch.tensor(DEFAULT_MEAN).view(3, 1, 1)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_hue_shift_leaves_grey_pixels_grey():
    grey = np.full((32, 32, 3), 128, np.uint8)
    t = TrainTransform((32, 32), scale=(1.0, 1.0), hflip=False, generator=torch.Generator().manual_seed(2),
                       brightness=0, contrast=0, saturation=0, hue=0.5, mean=(0, 0, 0), std=(1, 1, 1))
    image, _ = t(grey, np.zeros((32, 32), np.uint8))
    assert torch.allclose(image, torch.full_like(image, 128 / 255), atol=1e-4)


def test_eval_transform_resizes_and_normalises():
    rgb, labels = _blocky_pair(120, 160)
    image, target = EvalTransform((60, 80))(rgb, labels)
    assert image.shape == (3, 60, 80) and target.shape == (60, 80)
    assert set(target.unique().tolist()) <= set(np.unique(labels).tolist())
    mean_colour = np.broadcast_to((np.array(DEFAULT_MEAN) * 255).astype(np.uint8), (8, 8, 3))
    normed, none = EvalTransform(None)(mean_colour)
    assert none is None and normed.shape == (3, 8, 8) and normed.abs().max() < 0.02
    with pytest.raises(ValueError, match='do not match'):
        EvalTransform((8, 8))(rgb, labels[:10])
