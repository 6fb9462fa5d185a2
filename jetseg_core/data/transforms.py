"""Paired image/label transforms for training and evaluation (torch only, no torchvision).

The paper trained without augmentation; RegSeg's CamVid recipe (random scale 0.5-2.0, crop,
flip) is what makes a small network generalise, so training uses it plus photometric jitter.
Images are resized bilinearly, labels with nearest neighbour (never mixing class ids), and
padding of labels uses the ignore index so padded pixels teach nothing.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from jetseg_core.palettes import IGNORE_INDEX

__all__ = ['DEFAULT_MEAN', 'DEFAULT_STD', 'EvalTransform', 'TrainTransform', 'normalize', 'resize_pair']

# ImageNet statistics (0..1 RGB): the usual convention, stored in every checkpoint's metadata.
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)


def _check_pair(rgb: np.ndarray, labels: np.ndarray | None) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'image must be HxWx3, got shape {rgb.shape}')
    if labels is not None and labels.shape != rgb.shape[:2]:
        raise ValueError(f'labels {labels.shape} do not match image {rgb.shape[:2]}')


def _tensor(array: np.ndarray) -> torch.Tensor:
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())  # PIL arrays are read-only


def _to_float(rgb: np.ndarray) -> torch.Tensor:
    return _tensor(rgb).permute(2, 0, 1).float().div_(255.0)


def _size(size: Sequence[int] | int) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f'size must be positive, got {size}')
    return h, w


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(image - mean) / std per channel, in place on a float (3, H, W) tensor in 0..1."""
    m = torch.tensor(mean, dtype=image.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(3, 1, 1)
    return image.sub_(m).div_(s)


def resize_pair(image: torch.Tensor, labels: torch.Tensor | None, size: tuple[int, int]
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resize a float image (3, H, W) bilinearly (antialiased when shrinking) and labels (H, W) by nearest."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, labels
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    image = F.interpolate(image[None], size=size, mode='bilinear', align_corners=False, antialias=shrink)[0]
    if labels is not None:
        labels = F.interpolate(labels[None, None].float(), size=size,
                               mode='nearest-exact')[0, 0].to(labels.dtype)
    return image, labels


def _hue_rotation(angle: float) -> torch.Tensor:
    """Rotation of RGB about the grey axis: shifts hue while keeping brightness (approximately)."""
    c, s = math.cos(angle), math.sin(angle)
    k = 1.0 / 3.0
    r = math.sqrt(k)
    return torch.tensor([
        [c + (1 - c) * k, (1 - c) * k - r * s, (1 - c) * k + r * s],
        [(1 - c) * k + r * s, c + (1 - c) * k, (1 - c) * k - r * s],
        [(1 - c) * k - r * s, (1 - c) * k + r * s, c + (1 - c) * k],
    ])


class TrainTransform:
    """Random scale, crop (labels padded with ignore), horizontal flip and colour jitter, then normalise.

    Scale 1.0 means the image just covers the crop; a scale s draws from `scale` (log-uniform) and
    multiplies that. Randomness comes from `generator` when given (reproducible), else torch's
    global RNG (which DataLoader seeds per worker).
    """

    def __init__(self, size: Sequence[int] | int, scale: tuple[float, float] = (0.5, 2.0), hflip: bool = True,
                 jitter: bool = True, mean: Sequence[float] = DEFAULT_MEAN,
                 std: Sequence[float] = DEFAULT_STD, ignore_index: int = IGNORE_INDEX,
                 generator: torch.Generator | None = None,
                 brightness: float = 0.3, contrast: float = 0.3, saturation: float = 0.3, hue: float = 0.05):
        self.size = _size(size)
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f'scale must be (low, high) with 0 < low <= high, got {scale}')
        self.scale, self.hflip, self.jitter = (float(scale[0]), float(scale[1])), hflip, jitter
        self.mean, self.std, self.ignore_index = tuple(mean), tuple(std), ignore_index
        self.generator = generator
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self._rand()

    def colour_jitter(self, image: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation and hue changes in random order on a 0..1 image."""
        order = torch.randperm(4, generator=self.generator).tolist()
        grey_w = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        for op in order:
            if op == 0 and self.brightness > 0:
                image = image * self._uniform(1 - self.brightness, 1 + self.brightness)
            elif op == 1 and self.contrast > 0:
                mean = (image * grey_w).sum(0).mean()
                image = (image - mean) * self._uniform(1 - self.contrast, 1 + self.contrast) + mean
            elif op == 2 and self.saturation > 0:
                grey = (image * grey_w).sum(0, keepdim=True)
                image = (image - grey) * self._uniform(1 - self.saturation, 1 + self.saturation) + grey
            elif op == 3 and self.hue > 0:
                rot = _hue_rotation(self._uniform(-self.hue, self.hue) * 2 * math.pi)
                image = torch.einsum('ij,jhw->ihw', rot, image)
        return image.clamp_(0.0, 1.0)

    def __call__(self, rgb: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(rgb, labels)
        image, target = _to_float(rgb), _tensor(labels).long()
        out_h, out_w = self.size
        in_h, in_w = image.shape[-2:]
        lo, hi = math.log(self.scale[0]), math.log(self.scale[1])
        factor = max(out_h / in_h, out_w / in_w) * math.exp(self._uniform(lo, hi))
        new_h, new_w = max(1, round(in_h * factor)), max(1, round(in_w * factor))
        image, target = resize_pair(image, target, (new_h, new_w))

        # Crop window start: inside the image when it is larger, a random placement when smaller.
        def start(extent: int, out: int) -> int:
            low, high = min(0, extent - out), max(0, extent - out)
            return low + int(torch.randint(0, high - low + 1, (), generator=self.generator))

        y0, x0 = start(new_h, out_h), start(new_w, out_w)
        sy, sx = max(y0, 0), max(x0, 0)
        ey, ex = min(y0 + out_h, new_h), min(x0 + out_w, new_w)
        image, target = image[:, sy:ey, sx:ex], target[sy:ey, sx:ex]
        if self.hflip and self._rand() < 0.5:
            image, target = image.flip(-1), target.flip(-1)
        if self.jitter:
            image = self.colour_jitter(image)
        image = normalize(image.contiguous(), self.mean, self.std)
        if image.shape[-2:] != (out_h, out_w):  # pad: zeros are the mean colour after normalising
            canvas = torch.zeros(3, out_h, out_w)
            canvas_t = torch.full((out_h, out_w), self.ignore_index, dtype=torch.long)
            oy, ox = sy - y0, sx - x0
            canvas[:, oy:oy + image.shape[1], ox:ox + image.shape[2]] = image
            canvas_t[oy:oy + image.shape[1], ox:ox + image.shape[2]] = target
            image, target = canvas, canvas_t
        return image, target.contiguous()


class EvalTransform:
    """Resize to the network size (bilinear image, nearest labels) and normalise.

    Size None keeps the input size. ``native_labels`` leaves the labels at their stored size, for
    scoring against them as benchmark protocols do (the predictions are upsampled instead).
    """

    def __init__(self, size: Sequence[int] | int | None, mean: Sequence[float] = DEFAULT_MEAN,
                 std: Sequence[float] = DEFAULT_STD, native_labels: bool = False):
        self.size = None if size is None else _size(size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.native_labels = native_labels

    def __call__(self, rgb: np.ndarray, labels: np.ndarray | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        _check_pair(rgb, labels)
        image = _to_float(rgb)
        target = None if labels is None else _tensor(labels).long()
        if self.size is not None:
            image, resized = resize_pair(image, None if self.native_labels else target, self.size)
            target = target if self.native_labels else resized
        return normalize(image.contiguous(), self.mean, self.std), target
