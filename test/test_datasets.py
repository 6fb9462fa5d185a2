import numpy as np
import pytest
import torch
from PIL import Image

from jetseg_core.data.datasets import (
    CAMVID32_TO_11,
    DatasetError,
    build_dataset,
    error_line,
    paper_split,
    pixel_counts,
)
from jetseg_core.data.synthetic import SyntheticScenes
from jetseg_core.data.transforms import EvalTransform
from jetseg_core.palettes import CAMVID11, CAMVID31, CAMVID32, CITYSCAPES19

H, W = 12, 16


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _rgb(seed):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _ids(seed, high):
    return np.random.default_rng(seed + 100).integers(0, high, (H, W), dtype=np.uint8)


@pytest.fixture
def camvid_segnet(tmp_path):
    for split, n in (('train', 3), ('val', 2), ('test', 2)):
        for i in range(n):
            _save(tmp_path / split / f'{split}{i}.png', _rgb(i))
            _save(tmp_path / f'{split}annot' / f'{split}{i}.png', _ids(i, 12))  # 11 = void
    return tmp_path


def _write_camvid32(root, n=10):
    lines = [f'{r} {g} {b}\t{name}'
             for name, (r, g, b) in zip(CAMVID32.class_names, CAMVID32.colors.tolist(), strict=True)]
    (root / 'label_colors.txt').parent.mkdir(parents=True, exist_ok=True)
    (root / 'label_colors.txt').write_text('\n'.join(lines) + '\n')
    for i in range(n):
        stem = f'0001TP_{i:06d}'
        _save(root / '701_StillsRaw_full' / f'{stem}.png', _rgb(i))
        _save(root / 'LabeledApproved_full' / f'{stem}_L.png', CAMVID32.colors[_ids(i, 32)])
    return root


def test_camvid_segnet_layout_reads_ids_and_void_becomes_ignore(camvid_segnet):
    ds = build_dataset('camvid', camvid_segnet, 'train')
    assert len(ds) == 3 and ds.num_classes == 11 and ds.class_names == CAMVID11.class_names
    rgb, labels = ds[0]
    raw = _ids(0, 12)
    assert np.array_equal(rgb, _rgb(0))
    assert np.array_equal(labels[raw < 11], raw[raw < 11]) and np.all(labels[raw == 11] == 255)
    assert len(build_dataset('camvid', camvid_segnet, 'trainval')) == 5
    assert len(build_dataset('camvid', camvid_segnet, 'test')) == 2


def test_transform_is_applied_to_items(camvid_segnet):
    ds = build_dataset('camvid', camvid_segnet, 'val', transform=EvalTransform((24, 32)))
    image, target = ds[1]
    assert image.shape == (3, 24, 32) and target.shape == (24, 32) and target.dtype == torch.long


def test_missing_mask_is_one_error_naming_the_file(camvid_segnet):
    (camvid_segnet / 'trainannot' / 'train1.png').unlink()
    with pytest.raises(DatasetError, match=r'trainannot/train1\.png: mask missing for image .*train1\.png'):
        build_dataset('camvid', camvid_segnet, 'train')


def test_image_mask_size_mismatch_names_both_files(camvid_segnet):
    _save(camvid_segnet / 'trainannot' / 'train2.png', np.zeros((H, W + 1), np.uint8))
    ds = build_dataset('camvid', camvid_segnet, 'train')
    with pytest.raises(DatasetError,
                       match=r'trainannot/train2\.png: mask is 17x12 .* image .*train/train2\.png'):
        ds[2]


def test_unknown_label_id_is_reported(camvid_segnet):
    _save(camvid_segnet / 'testannot' / 'test0.png', np.full((H, W), 40, np.uint8))
    with pytest.raises(DatasetError, match=r'testannot/test0\.png: unknown label id\(s\) \[40\]'):
        build_dataset('camvid', camvid_segnet, 'test')[0]


def test_camvid32_colour_labels_decode_to_31_classes_with_void_ignored(tmp_path):
    root = _write_camvid32(tmp_path)
    ds = build_dataset('camvid32', root, 'all')
    # Void is never a target, so it is no class: no network output, no IoU, no class_info entry.
    assert len(ds) == 10 and ds.num_classes == 31 and 'Void' not in ds.class_names
    assert ds.class_names == CAMVID31.class_names == tuple(n for n in CAMVID32.class_names if n != 'Void')
    assert np.array_equal(ds.palette.colors, CAMVID31.colors)
    _, labels = ds[3]
    raw = _ids(3, 32)
    for src_id, name in enumerate(CAMVID32.class_names):
        expected = 255 if name == 'Void' else CAMVID31.index(name)
        assert np.all(labels[raw == src_id] == expected), name
    assert labels[labels != 255].max() <= 30
    assert np.array_equal(CAMVID31.colors[CAMVID31.index('Wall')], CAMVID32.colors[CAMVID32.index('Wall')])


def test_camvid32_with_its_own_label_colors_file_also_drops_void(tmp_path):
    root = _write_camvid32(tmp_path, n=3)
    lines = (root / 'label_colors.txt').read_text().splitlines()
    (root / 'label_colors.txt').write_text('\n'.join(reversed(lines)) + '\n')  # another class order
    ds = build_dataset('camvid32', root, 'all')
    assert ds.num_classes == 31 and ds.class_names[0] == 'Wall' and 'Void' not in ds.class_names
    _, labels = ds[1]
    raw = _ids(1, 32)
    wall = CAMVID32.index('Wall')
    assert np.all(labels[raw == wall] == 0) and np.all(labels[raw == CAMVID32.index('Void')] == 255)


def test_corrupt_image_or_label_file_is_named_in_the_error(camvid_segnet):
    image = camvid_segnet / 'train' / 'train1.png'
    image.write_bytes(image.read_bytes()[:100])
    (camvid_segnet / 'trainannot' / 'train2.png').write_bytes(b'not a png at all')
    ds = build_dataset('camvid', camvid_segnet, 'train')
    with pytest.raises(DatasetError, match=r'train/train1\.png: cannot read image'):
        ds[1]
    with pytest.raises(DatasetError, match=r'trainannot/train2\.png: cannot read image'):
        ds[2]
    with pytest.raises(DatasetError, match=r'trainannot/train2\.png: cannot read image'):
        ds.load_labels(2)


@pytest.mark.forks_workers
def test_error_line_takes_the_message_out_of_a_dataloader_worker_traceback(camvid_segnet):
    _save(camvid_segnet / 'trainannot' / 'train0.png', np.full((H, W), 60, np.uint8))
    ds = build_dataset('camvid', camvid_segnet, 'train', transform=EvalTransform((24, 32)))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1)
    with pytest.raises(DatasetError) as caught:
        next(iter(loader))
    assert 'Traceback' in str(caught.value)  # what DataLoader makes of a worker's exception
    line = error_line(caught.value)
    assert 'trainannot/train0.png: unknown label id(s) [60]' in line
    assert line.endswith('; this layout has ids 0..11, 255') and '\n' not in line


def test_camvid32_maps_to_11_classes_with_the_documented_grouping(tmp_path):
    root = _write_camvid32(tmp_path)
    ds = build_dataset('camvid32to11', root, 'all')
    assert ds.num_classes == 11
    _, labels = ds[0]
    raw = _ids(0, 32)
    for src_id, src_name in enumerate(CAMVID32.class_names):
        where = raw == src_id
        expected = 255 if src_name == 'Void' else CAMVID11.index(CAMVID32_TO_11[src_name])
        assert np.all(labels[where] == expected), src_name
    assert set(CAMVID32_TO_11) == set(CAMVID32.class_names) - {'Void'}
    assert set(CAMVID32_TO_11.values()) == set(CAMVID11.class_names)


def test_unknown_colour_names_the_label_file(tmp_path):
    root = _write_camvid32(tmp_path, n=3)
    bad = CAMVID32.colors[_ids(1, 32)].copy()
    bad[0, 0] = (1, 2, 3)
    _save(root / 'LabeledApproved_full' / '0001TP_000001_L.png', bad)
    ds = build_dataset('camvid32', root, 'all')
    with pytest.raises(DatasetError,
                       match=r'0001TP_000001_L\.png: unknown label colour \(1, 2, 3\) on 1 pixels'):
        ds[1]


def test_camvid32_uses_the_seeded_paper_split(tmp_path):
    root = _write_camvid32(tmp_path, n=10)
    train = build_dataset('camvid32', root, 'train', seed=4)
    test = build_dataset('camvid32', root, 'test', seed=4)
    split = paper_split([f'0001TP_{i:06d}' for i in range(10)], seed=4)
    assert [p[0].stem for p in train.pairs] == split['train']
    assert [p[0].stem for p in test.pairs] == split['test']


def test_paper_split_sizes_and_reproducibility():
    stems = [f'f{i:04d}' for i in range(701)]
    split = paper_split(stems, seed=0)
    assert (len(split['trainval']), len(split['test'])) == (468, 233)
    assert (len(split['train']), len(split['val'])) == (367, 101)
    assert set(split['train']) | set(split['val']) == set(split['trainval'])
    assert not set(split['trainval']) & set(split['test'])
    assert paper_split(list(reversed(stems)), seed=0) == split  # input order does not matter
    assert paper_split(stems, seed=1)['test'] != split['test']


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    for city in ('aachen', 'bremen'):
        for i in range(2):
            stem = f'{city}_000000_00000{i}'
            _save(tmp_path / 'leftImg8bit' / 'val' / city / f'{stem}_leftImg8bit.png', _rgb(i))
            ids = _ids(i, 34)
            _save(tmp_path / 'gtFine' / 'val' / city / f'{stem}_gtFine_labelIds.png', ids)
    ds = build_dataset('cityscapes', tmp_path, 'val')
    assert len(ds) == 4 and ds.num_classes == 19 and ds.class_names == CITYSCAPES19.class_names
    _, labels = ds[0]
    raw = _ids(0, 34)
    assert np.all(labels[raw == 7] == 0) and np.all(labels[raw == 26] == 13)
    assert np.all(labels[raw == 33] == 18)
    assert np.all(labels[(raw < 7) | (raw == 9) | (raw == 30)] == 255)


def test_folder_layout_pairs_images_and_masks_by_stem(tmp_path):
    for i in range(6):
        _save(tmp_path / 'images' / f'frame{i}.png', _rgb(i))
        _save(tmp_path / 'masks' / f'frame{i}.png', _ids(i, 11))
    full = build_dataset('folder', tmp_path, 'all')
    assert len(full) == 6 and np.array_equal(full[2][1], _ids(2, 11))
    train, val = build_dataset('folder', tmp_path, 'train'), build_dataset('folder', tmp_path, 'val')
    assert len(train) + len(val) == 6 and len(val) == 1
    assert not {p[0] for p in train.pairs} & {p[0] for p in val.pairs}
    (tmp_path / 'masks' / 'frame4.png').unlink()
    with pytest.raises(DatasetError, match=r'masks/frame4\.png: mask missing'):
        build_dataset('folder', tmp_path, 'all')


def test_synthetic_dataset_and_pixel_counts():
    ds = build_dataset('synthetic', None, 'val', num_scenes=3, size=(48, 64))
    assert isinstance(ds, SyntheticScenes) and len(ds) == 3
    train = build_dataset('synthetic', None, 'train', num_scenes=3, size=(48, 64))
    assert not np.array_equal(ds[0][1], train[0][1])
    counts = pixel_counts(ds, 11)
    expected = sum(np.bincount(ds[i][1].ravel(), minlength=11) for i in range(3))
    assert counts.tolist() == expected.tolist() and counts.sum() == 3 * 48 * 64


def test_pixel_counts_skip_ignored_pixels(camvid_segnet):
    ds = build_dataset('camvid', camvid_segnet, 'train', transform=EvalTransform(None))
    counts = pixel_counts(ds, 11)
    raws = [_ids(i, 12) for i in range(3)]
    assert counts.sum() == sum(int((r < 11).sum()) for r in raws)
    assert counts[3] == sum(int((r == 3).sum()) for r in raws)


def test_bad_names_and_roots_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match='unknown dataset'):
        build_dataset('pascal', tmp_path, 'train')
    with pytest.raises(DatasetError, match='dataset root not found'):
        build_dataset('camvid', tmp_path / 'nope', 'train')
    with pytest.raises(DatasetError, match=r'train: folder not found'):
        build_dataset('camvid', tmp_path, 'train')
