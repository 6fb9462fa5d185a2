"""jetseg_core: the JetSeg network, loss, data, training and inference (pure PyTorch)."""
__version__ = '0.1.0'
