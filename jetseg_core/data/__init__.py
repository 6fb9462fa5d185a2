"""Data for JetSeg: synthetic street scenes, real dataset layouts and their transforms."""
from jetseg_core.data.datasets import (
    DatasetError,
    build_dataset,
    paper_split,
    pixel_counts,
)
from jetseg_core.data.synthetic import SyntheticScenes, generate_scene
from jetseg_core.data.transforms import EvalTransform, TrainTransform

__all__ = [
    'DatasetError', 'EvalTransform', 'SyntheticScenes', 'TrainTransform', 'build_dataset', 'generate_scene',
    'paper_split', 'pixel_counts',
]
