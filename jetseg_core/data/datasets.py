"""Readers for the dataset layouts JetSeg is trained and evaluated on.

Layouts (``root`` is the folder you unpacked):

* ``camvid`` - SegNet's 11-class CamVid: ``train/ trainannot/ val/ valannot/ test/ testannot/``
  with label PNGs holding ids 0..10 (CAMVID11 order) and 11 = void, read as ignore (255).
  Its folders already hold the paper's 367 / 101 / 233 split.
* ``camvid32`` / ``camvid32to11`` - the original release: ``701_StillsRaw_full/<stem>.png`` and
  colour-coded ``LabeledApproved_full/<stem>_L.png`` with ``label_colors.txt`` (the 32 classes;
  the built-in CAMVID32 table is used when the file is absent). Void is ignore (255) and not a
  class, so ``camvid32`` has 31 classes (CAMVID31, the file's order less Void). The split is the
  paper's, drawn by `paper_split` with a seed. ``camvid32to11`` maps classes with CAMVID32_TO_11.
* ``cityscapes`` - ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
  ``gtFine/<split>/<city>/*_gtFine_labelIds.png``, mapped to the 19 train ids, all else ignored.
* ``folder`` - ``images/<stem>.<png|jpg|...>`` with ``masks/<stem>.png`` holding class ids
  (255 = ignore), either directly under root (split 'all', or a seeded 'train'/'val' split) or
  under ``root/<split>/``.
* ``synthetic`` - procedurally rendered scenes (no files; see data/synthetic.py).

Every problem with the files (missing mask, size mismatch, an unreadable or corrupt file, an
unknown colour or id) raises one DatasetError whose message starts with the offending file.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from jetseg_core.data.synthetic import SyntheticScenes
from jetseg_core.palettes import CAMVID11, CAMVID31, CAMVID32, CITYSCAPES19, IGNORE_INDEX, Palette
from jetseg_core.rgb import pil_to_rgb

__all__ = [
    'CAMVID32_TO_11', 'CITYSCAPES_LABEL_TO_TRAIN', 'DATASETS', 'DatasetError', 'SegmentationFiles',
    'build_dataset', 'error_line', 'paper_split', 'pixel_counts',
]

DATASETS = ('camvid', 'camvid32', 'camvid32to11', 'cityscapes', 'folder', 'synthetic')
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.ppm')

# The usual grouping of CamVid's 32 classes into SegNet's 11 (as in MATLAB's CamVid example and
# many public ports). Void has no class: it becomes ignore (255).
CAMVID32_TO_11: dict[str, str] = {
    'Sky': 'Sky',
    'Building': 'Building', 'Archway': 'Building', 'Bridge': 'Building', 'Tunnel': 'Building',
    'Wall': 'Building',
    'Column_Pole': 'Pole', 'TrafficCone': 'Pole',
    'Road': 'Road', 'LaneMkgsDriv': 'Road', 'LaneMkgsNonDriv': 'Road',
    'Sidewalk': 'Pavement', 'ParkingBlock': 'Pavement', 'RoadShoulder': 'Pavement',
    'Tree': 'Tree', 'VegetationMisc': 'Tree',
    'SignSymbol': 'SignSymbol', 'Misc_Text': 'SignSymbol', 'TrafficLight': 'SignSymbol',
    'Fence': 'Fence',
    'Car': 'Car', 'SUVPickupTruck': 'Car', 'Truck_Bus': 'Car', 'Train': 'Car', 'OtherMoving': 'Car',
    'Pedestrian': 'Pedestrian', 'Child': 'Pedestrian', 'CartLuggagePram': 'Pedestrian',
    'Animal': 'Pedestrian',
    'Bicyclist': 'Bicyclist', 'MotorcycleScooter': 'Bicyclist',
}

# Cityscapes labelIds -> train ids (official cityscapesScripts table); all other ids are ignored.
CITYSCAPES_LABEL_TO_TRAIN: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

_INVALID = 1000  # marker in id lookup tables for values a layout never contains


class DatasetError(Exception):
    """A dataset file is missing or unreadable; the message starts with the file's path."""


def error_line(exc: BaseException) -> str:
    """The one-line message of a DatasetError, also when a DataLoader worker raised it: the
    loader then re-raises it in the main process with the worker's traceback in the message."""
    text = str(exc).strip()
    if 'Original Traceback' in text:
        for line in reversed(text.splitlines()):
            if 'DatasetError: ' in line:
                return line.split('DatasetError: ', 1)[1].strip()
    return text.splitlines()[0] if text else type(exc).__name__


def paper_split(stems: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
    """The JetSeg paper's CamVid split drawn reproducibly: 468 train+val / 233 test, then 367 train / 101 val.

    With a number of frames other than 701 the same proportions are used. The order of `stems`
    does not matter (they are sorted first); the result lists are sorted too.
    """
    names = sorted(set(stems))
    n = len(names)
    if n < 3:
        raise ValueError(f'need at least 3 frames to split, got {n}')
    n_test = 233 if n == 701 else max(1, round(n * 233 / 701))
    n_trainval = n - n_test
    n_val = 101 if n == 701 else max(1, round(n_trainval * 101 / 468))
    order = np.random.default_rng(seed).permutation(n)
    test = [names[i] for i in order[:n_test]]
    trainval = [names[i] for i in order[n_test:]]
    val, train = trainval[:n_val], trainval[n_val:]
    return {'train': sorted(train), 'val': sorted(val), 'trainval': sorted(trainval), 'test': sorted(test)}


# --------------------------------------------------------------------------- reading files


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise DatasetError(f'{path}: file not found') from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f'{path}: cannot read image ({exc})') from None


def _read_rgb(path: Path) -> np.ndarray:
    return pil_to_rgb(_open(path))


def _read_ids(path: Path) -> np.ndarray:
    """A single-channel label image as integers (palette PNGs give their indices)."""
    image = _open(path)
    if image.mode in ('RGB', 'RGBA'):
        array = np.asarray(image)
        if not (np.array_equal(array[..., 0], array[..., 1])
                and np.array_equal(array[..., 0], array[..., 2])):
            raise DatasetError(
                f'{path}: expected a single-channel label image of class ids, got colour {image.mode}')
        return array[..., 0].astype(np.int32)
    return np.asarray(image).astype(np.int32)


def _id_table(mapping: dict[int, int]) -> np.ndarray:
    table = np.full(65536, _INVALID, np.int32)
    for src, dst in mapping.items():
        table[src] = dst
    return table


def _map_ids(ids: np.ndarray, table: np.ndarray, path: Path) -> np.ndarray:
    if ids.min() < 0 or ids.max() >= len(table):
        raise DatasetError(
            f'{path}: label value {int(ids.min() if ids.min() < 0 else ids.max())} out of range')
    out = table[ids]
    bad = out == _INVALID
    if bad.any():
        values = np.unique(ids[bad])
        raise DatasetError(f'{path}: unknown label id(s) {values[:8].tolist()} ({int(bad.sum())} pixels); '
                           f'this layout has ids {_id_ranges(np.flatnonzero(table != _INVALID))}')
    return out.astype(np.uint8)


def _id_ranges(ids: np.ndarray) -> str:
    """'0..10, 255' for the valid ids of a lookup table."""
    parts, start = [], None
    for i, value in enumerate(ids.tolist()):
        if start is None:
            start = value
        if i + 1 == len(ids) or ids[i + 1] != value + 1:
            parts.append(str(value) if value == start else f'{start}..{value}')
            start = None
    return ', '.join(parts)


def _map_colours(rgb: np.ndarray, colour_to_id: dict[int, int], path: Path) -> np.ndarray:
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    uniq, inverse = np.unique(code, return_inverse=True)
    ids = np.empty(len(uniq), np.uint8)
    for i, c in enumerate(uniq.tolist()):
        if c not in colour_to_id:
            count = int((inverse == i).sum())
            raise DatasetError(f'{path}: unknown label colour ({c >> 16}, {(c >> 8) & 255}, {c & 255}) '
                               f'on {count} pixels; not in label_colors.txt')
        ids[i] = colour_to_id[c]
    return ids[inverse.reshape(code.shape)]


def _colour_code(rgb: Sequence[int]) -> int:
    return (int(rgb[0]) << 16) | (int(rgb[1]) << 8) | int(rgb[2])


def read_label_colors(path: Path) -> Palette:
    """Parse CamVid's label_colors.txt ("R G B<tab>Name" per line) into a palette."""
    names, colours = [], []
    try:
        lines = path.read_text(encoding='utf-8', errors='replace').splitlines()
    except OSError as exc:
        raise DatasetError(f'{path}: cannot read ({exc})') from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = re.match(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\S.*?)\s*$', line)
        if not match or any(int(v) > 255 for v in match.groups()[:3]):
            raise DatasetError(f'{path}: line {number} is not "R G B Name": {line.strip()!r}')
        colours.append([int(v) for v in match.groups()[:3]])
        names.append(match.group(4))
    if not names:
        raise DatasetError(f'{path}: no classes listed')
    if len({_colour_code(c) for c in colours}) != len(colours):
        raise DatasetError(f'{path}: the same colour is listed twice')
    return Palette('camvid32', tuple(names), np.array(colours, np.uint8))


# --------------------------------------------------------------------------- dataset class


class SegmentationFiles(torch.utils.data.Dataset):
    """(image, label) file pairs decoded to (rgb HxWx3 uint8, labels HxW uint8 with 255 = ignore).

    Without a transform an item is that numpy pair; with one, transform(rgb, labels).
    """

    def __init__(self, name: str, pairs: list[tuple[Path, Path]], palette: Palette,
                 decode: Callable[[Path], np.ndarray], transform: Callable | None = None):
        self.name, self.pairs, self.palette = name, pairs, palette
        self.decode, self.transform = decode, transform
        self.class_names = palette.class_names
        self.num_classes = palette.num_classes

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.pairs[index]
        rgb = _read_rgb(image_path)
        labels = self.decode(label_path)
        if labels.shape != rgb.shape[:2]:
            raise DatasetError(f'{label_path}: mask is {labels.shape[1]}x{labels.shape[0]} (WxH) but image '
                               f'{image_path} is {rgb.shape[1]}x{rgb.shape[0]}')
        return rgb, labels

    def load_labels(self, index: int) -> np.ndarray:
        return self.decode(self.pairs[index][1])

    def __getitem__(self, index: int):
        rgb, labels = self.load(index)
        return self.transform(rgb, labels) if self.transform is not None else (rgb, labels)

    def __repr__(self) -> str:
        return f'SegmentationFiles({self.name!r}, {len(self)} pairs, {self.num_classes} classes)'


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f'{folder}: folder not found')
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DatasetError(f'{folder}: no images found')
    return files


def _pair_or_fail(pairs: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    missing = [(img, lbl) for img, lbl in pairs if not lbl.is_file()]
    if missing:
        img, lbl = missing[0]
        more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
        raise DatasetError(f'{lbl}: mask missing for image {img}{more}')
    return pairs


def _camvid_segnet(root: Path, split: str, transform: Callable | None) -> SegmentationFiles:
    splits = {'train': ['train'], 'val': ['val'], 'test': ['test'], 'trainval': ['train', 'val']}
    if split not in splits:
        raise ValueError(f'camvid split must be one of {", ".join(splits)}, got {split!r}')
    pairs = []
    for part in splits[split]:
        pairs += [(img, root / f'{part}annot' / img.name) for img in _images_in(root / part)]
    table = _id_table({**{i: i for i in range(11)}, 11: IGNORE_INDEX, IGNORE_INDEX: IGNORE_INDEX})
    return SegmentationFiles('camvid', _pair_or_fail(pairs), CAMVID11,
                             lambda p: _map_ids(_read_ids(p), table, p), transform)


def _camvid32(root: Path, split: str, transform: Callable | None, to11: bool, seed: int) -> SegmentationFiles:
    colours_file = root / 'label_colors.txt'
    table = read_label_colors(colours_file) if colours_file.is_file() else CAMVID32
    if to11:
        unknown = [n for n in table.class_names if n != 'Void' and n not in CAMVID32_TO_11]
        if unknown:
            raise DatasetError(f'{colours_file}: no 11-class mapping for {unknown}')
        ids = [CAMVID11.index(CAMVID32_TO_11[n]) if n in CAMVID32_TO_11 else IGNORE_INDEX
               for n in table.class_names]
        palette = CAMVID11
    else:  # Void is ignore, not a class: the others keep the file's order, numbered without it
        kept = [i for i, n in enumerate(table.class_names) if n != 'Void']
        ids = [kept.index(i) if i in kept else IGNORE_INDEX for i in range(len(table.class_names))]
        palette = CAMVID31 if table is CAMVID32 else Palette(
            'camvid31', tuple(table.class_names[i] for i in kept), table.colors[kept])
    colour_to_id = {_colour_code(c): i for c, i in zip(table.colors.tolist(), ids, strict=True)}
    images = _images_in(root / '701_StillsRaw_full')
    by_stem = {p.stem: p for p in images}
    if split == 'all':
        chosen = sorted(by_stem)
    else:
        parts = paper_split(list(by_stem), seed)
        if split not in parts:
            raise ValueError(f'camvid32 split must be one of all, {", ".join(parts)}, got {split!r}')
        chosen = parts[split]
    pairs = [(by_stem[s], root / 'LabeledApproved_full' / f'{s}_L.png') for s in chosen]
    name = 'camvid32to11' if to11 else 'camvid32'
    return SegmentationFiles(name, _pair_or_fail(pairs), palette,
                             lambda p: _map_colours(_read_rgb(p), colour_to_id, p), transform)


def _cityscapes(root: Path, split: str, transform: Callable | None) -> SegmentationFiles:
    image_root = root / 'leftImg8bit' / split
    if not image_root.is_dir():
        raise DatasetError(f'{image_root}: folder not found (expected leftImg8bit/<split>/<city>/)')
    images = sorted(image_root.glob('*/*_leftImg8bit.png'))
    if not images:
        raise DatasetError(f'{image_root}: no *_leftImg8bit.png images found')
    pairs = [(img, root / 'gtFine' / split / img.parent.name / img.name.replace('_leftImg8bit.png',
                                                                             '_gtFine_labelIds.png'))
             for img in images]
    table = _id_table({**{i: IGNORE_INDEX for i in range(34)}, **CITYSCAPES_LABEL_TO_TRAIN,
                       IGNORE_INDEX: IGNORE_INDEX})
    return SegmentationFiles('cityscapes', _pair_or_fail(pairs), CITYSCAPES19,
                             lambda p: _map_ids(_read_ids(p), table, p), transform)


def _folder(root: Path, split: str, transform: Callable | None, palette: Palette | str, seed: int,
            val_fraction: float) -> SegmentationFiles:
    from jetseg_core.palettes import get_palette
    palette = get_palette(palette) if isinstance(palette, str) else palette
    base = root / split if (root / split / 'images').is_dir() else root
    images = _images_in(base / 'images')
    if base == root and split != 'all':
        if split not in ('train', 'val'):
            raise ValueError(f'folder split must be all, train or val '
                             f'(or a sub-folder {root}/<split>/images), got {split!r}')
        order = np.random.default_rng(seed).permutation(len(images))
        n_val = max(1, round(len(images) * val_fraction)) if len(images) > 1 else 0
        keep = order[:n_val] if split == 'val' else order[n_val:]
        images = [images[i] for i in sorted(keep)]
    masks = base / 'masks'
    pairs = []
    for img in images:
        candidates = [masks / f'{img.stem}{ext}' for ext in ('.png', '.bmp', '.tif', '.tiff')]
        pairs.append((img, next((c for c in candidates if c.is_file()), candidates[0])))
    table = _id_table({**{i: i for i in range(palette.num_classes)}, IGNORE_INDEX: IGNORE_INDEX})
    return SegmentationFiles('folder', _pair_or_fail(pairs), palette,
                             lambda p: _map_ids(_read_ids(p), table, p), transform)


def build_dataset(name: str, root: str | Path | None, split: str, transform: Callable | None = None,
                  **options) -> torch.utils.data.Dataset:
    """Dataset by layout name (see the module docstring); items are transform(rgb, labels).

    Options: camvid32*: ``seed`` of the paper split (0); folder: ``palette`` (name or Palette,
    'camvid11'), ``seed``, ``val_fraction`` (0.15); synthetic: ``num_scenes`` (1000 train, 100
    otherwise), ``size`` ((360, 480)), ``seed`` (split-dependent).
    """
    key = name.strip().lower()
    if key not in DATASETS:
        raise ValueError(f'unknown dataset {name!r}; valid: {", ".join(DATASETS)}')
    if key == 'synthetic':
        offsets = {'train': 0, 'val': 1, 'test': 2, 'trainval': 3, 'all': 4}
        if split not in offsets:
            raise ValueError(f'synthetic split must be one of {", ".join(offsets)}, got {split!r}')
        unknown = set(options) - {'num_scenes', 'size', 'seed'}
        if unknown:
            raise TypeError(f'unknown synthetic option(s): {sorted(unknown)}')
        num = options.get('num_scenes', 1000 if split in ('train', 'trainval') else 100)
        seed = options.get('seed', 0) * 10 + offsets[split]  # disjoint scene streams per split
        return SyntheticScenes(num, tuple(options.get('size', (360, 480))), seed, transform)
    if root is None or str(root) == '':
        raise DatasetError(f'{key}: a dataset root folder is required')
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f'{root}: dataset root not found')
    if key == 'camvid':
        return _camvid_segnet(root, split, transform)
    if key in ('camvid32', 'camvid32to11'):
        return _camvid32(root, split, transform, key == 'camvid32to11', int(options.get('seed', 0)))
    if key == 'cityscapes':
        return _cityscapes(root, split, transform)
    return _folder(root, split, transform, options.get('palette', 'camvid11'), int(options.get('seed', 0)),
                   float(options.get('val_fraction', 0.15)))


def pixel_counts(dataset: torch.utils.data.Dataset, num_classes: int,
                 max_items: int | None = None) -> np.ndarray:
    """Labelled pixels per class over a dataset (ignore and out-of-range ids skipped), for JetLoss weights.

    Uses the dataset's raw labels (``load_labels``) when it has them, so no transform is applied.
    """
    counts = np.zeros(num_classes, np.int64)
    n = len(dataset) if max_items is None else min(len(dataset), max_items)
    raw = getattr(dataset, 'load_labels', None)
    for i in range(n):
        labels = raw(i) if raw is not None else dataset[i][1]
        labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        flat = labels.ravel().astype(np.int64)
        flat = flat[(flat >= 0) & (flat < num_classes)]
        counts += np.bincount(flat, minlength=num_classes)[:num_classes]
    return counts
