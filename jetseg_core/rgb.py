"""Decoded pictures as the HxWx3 uint8 RGB arrays every part of jetseg works on.

Light on purpose (numpy only): the ROS node imports it before torch is loaded.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

__all__ = ['mono16_to_8', 'pil_to_rgb']

_SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I')


def mono16_to_8(values: np.ndarray) -> np.ndarray:
    """16-bit intensities scaled to 0..255 and rounded (65535 -> 255, 257 -> 1)."""
    return ((np.asarray(values).astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image as HxWx3 uint8 RGB; 16-bit greyscale (depth PNGs, mono16 over image_transport) is
    scaled to 8 bits, where Pillow's own convert('RGB') would clip everything above 255 to white."""
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = mono16_to_8(np.clip(np.asarray(image), 0, 65535))
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image.convert('RGB'))
