"""Data for JetSeg: synthetic street scenes, real dataset layouts and their transforms."""
from jetseg_core.data.synthetic import SyntheticScenes, generate_scene

__all__ = ['SyntheticScenes', 'generate_scene']
