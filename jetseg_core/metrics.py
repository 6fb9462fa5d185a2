"""Segmentation metrics from one confusion matrix accumulated over a whole evaluation set.

mIoU follows the paper's eq. 3: per class IoU = TP / (TP + FP + FN) with TP, FP and FN summed
over every image of the set (not averaged per image), then the mean over classes. Classes that
appear in neither the labels nor the predictions have no IoU; they are left out of the mean and
listed in ``absent_classes``. Counting runs with torch.bincount on the tensors' own device.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from jetseg_core.palettes import IGNORE_INDEX

__all__ = ['ConfusionMatrix', 'IoUReport', 'format_iou_table']


@dataclass
class IoUReport:
    """Result of ConfusionMatrix.compute(); IoU values are fractions in 0..1 (nan for absent classes)."""

    miou: float
    per_class_iou: list[float]
    pixel_accuracy: float
    absent_classes: list[int]
    per_class_accuracy: list[float] = field(default_factory=list)  # recall per class (nan when no labels)
    mean_accuracy: float = float('nan')
    num_pixels: int = 0
    confusion: np.ndarray | None = None  # rows: truth, columns: prediction

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict:
        """JSON-friendly view (nan -> None) for evaluation reports and checkpoint metadata."""
        def clean(v: float) -> float | None:
            return None if math.isnan(v) else round(float(v), 6)
        names = (list(class_names) if class_names is not None
                 else [str(i) for i in range(len(self.per_class_iou))])
        return {
            'miou': clean(self.miou),
            'pixel_accuracy': clean(self.pixel_accuracy),
            'mean_accuracy': clean(self.mean_accuracy),
            'per_class_iou': {n: clean(v) for n, v in zip(names, self.per_class_iou, strict=False)},
            'absent_classes': [names[i] for i in self.absent_classes],
            'num_pixels': int(self.num_pixels),
        }


class ConfusionMatrix:
    """Accumulates a (truth x prediction) pixel count matrix over many batches."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.matrix: torch.Tensor | None = None

    def reset(self) -> None:
        self.matrix = None

    @torch.no_grad()
    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add a batch.

        `pred` is labels shaped like `target`, or scores (N, C, H, W) / (C, H, W) to argmax.
        """
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.ndim == target.ndim + 1:
            pred = pred.argmax(dim=-3)
        if pred.shape != target.shape:
            raise ValueError(
                f'prediction shape {tuple(pred.shape)} does not match target {tuple(target.shape)}')
        pred, target = pred.to(target.device).long().flatten(), target.long().flatten()
        valid = target != self.ignore_index
        pred, target = pred[valid], target[valid]
        k = self.num_classes
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= k):
            raise ValueError(f'target holds labels outside 0..{k - 1} (and not ignore {self.ignore_index})')
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= k):
            raise ValueError(f'prediction holds labels outside 0..{k - 1}')
        counts = torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)
        if self.matrix is None:
            self.matrix = counts
        else:
            self.matrix += counts.to(self.matrix.device)

    def compute(self) -> IoUReport:
        """IoU per class, mIoU over present classes, pixel and mean class accuracy."""
        k = self.num_classes
        cm = self.matrix.cpu().numpy() if self.matrix is not None else np.zeros((k, k), np.int64)
        cm = cm.astype(np.int64)
        tp = np.diag(cm).astype(np.float64)
        fp = cm.sum(axis=0) - tp
        fn = cm.sum(axis=1) - tp
        union = tp + fp + fn
        with np.errstate(divide='ignore', invalid='ignore'):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        present = union > 0
        total = int(cm.sum())
        return IoUReport(
            miou=float(iou[present].mean()) if present.any() else float('nan'),
            per_class_iou=iou.tolist(),
            pixel_accuracy=float(tp.sum() / total) if total else float('nan'),
            absent_classes=np.flatnonzero(~present).tolist(),
            per_class_accuracy=acc.tolist(),
            mean_accuracy=float(np.nanmean(acc)) if (tp + fn > 0).any() else float('nan'),
            num_pixels=total,
            confusion=cm,
        )


def format_iou_table(report: IoUReport, class_names: Sequence[str]) -> str:
    """A plain-text table of per-class IoU (percent) with mIoU and pixel accuracy underneath."""
    if len(class_names) != len(report.per_class_iou):
        raise ValueError(f'{len(class_names)} class names for {len(report.per_class_iou)} classes')
    width = max(12, *(len(n) for n in class_names))

    def pct(v: float) -> str:
        return '     -' if math.isnan(v) else f'{100 * v:6.2f}'

    lines = [f'{"class":<{width}}  IoU %   Acc %', '-' * (width + 16)]
    accs = report.per_class_accuracy or [float('nan')] * len(class_names)
    for name, iou, acc in zip(class_names, report.per_class_iou, accs, strict=False):
        lines.append(f'{name:<{width}} {pct(iou)}  {pct(acc)}')
    lines.append('-' * (width + 16))
    lines.append(f'{"mIoU":<{width}} {pct(report.miou)}')
    lines.append(f'{"pixel acc":<{width}} {pct(report.pixel_accuracy)}')
    if report.absent_classes:
        lines.append('absent (not in mean): ' + ', '.join(class_names[i] for i in report.absent_classes))
    return '\n'.join(lines)
