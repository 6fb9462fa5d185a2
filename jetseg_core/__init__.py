"""jetseg_core: the JetSeg network, loss, data, training and inference (pure PyTorch, no ROS)."""
from __future__ import annotations

__version__ = '0.1.0'
__all__ = ['PROFILES', 'build_model', '__version__']


def __getattr__(name: str) -> object:
    # Lazy, so that importing a light module (malloc, cli) does not load torch: tune_malloc()
    # should run before torch allocates anything.
    if name == 'build_model':
        from jetseg_core.model import build_model
        return build_model
    if name == 'PROFILES':
        from jetseg_core.profiles import PROFILES
        return PROFILES
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
