"""jetseg_core: the JetSeg network, loss, data, training and inference (pure PyTorch, no ROS)."""
__version__ = '0.1.0'

from jetseg_core.model import build_model  # noqa: E402
from jetseg_core.profiles import PROFILES  # noqa: E402

__all__ = ['PROFILES', 'build_model', '__version__']
