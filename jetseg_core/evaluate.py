"""jetseg-eval: score a checkpoint on a dataset split.

Prints the per-class IoU table, mIoU, pixel accuracy and images per second, draws the
confusion matrix (rows normalised: where each true class goes) and optionally writes JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .backends import BACKENDS
from .cli import OneLineParser, UsageError, non_negative_int, parse_size, positive_int, usage_error
from .train import DATASETS, SYNTHETIC_VAL_SEED_OFFSET, Dist, select_device


def build_parser() -> OneLineParser:
    p = OneLineParser(prog='jetseg-eval', description=__doc__.splitlines()[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('checkpoint', nargs='?', default='',
                   help="checkpoint file; empty: the shipped weights of --profile that fit --dataset "
                        "(synthetic for synthetic scenes, else CamVid where shipped); 'camvid', 'synthetic': "
                        "those shipped weights; 'untrained': random init")
    p.add_argument('--profile', default='nano',
                   help='profile of the shipped weights to use without a checkpoint')
    p.add_argument('--dataset', default='synthetic', choices=DATASETS)
    p.add_argument('--data-root', type=Path, default=None)
    p.add_argument('--split', default='test', help='dataset split (synthetic: held-out scenes)')
    p.add_argument('--size', type=parse_size, default=None,
                   help="network input HxW (default: the checkpoint's)")
    p.add_argument('--batch-size', type=positive_int, default=4)
    p.add_argument('--device', default='auto')
    p.add_argument('--threads', type=positive_int, default=None)
    p.add_argument('--backend', default='torch', choices=BACKENDS,
                   help='what runs the network: torch scores the checkpoint as trained; an engine '
                        "(auto: the one jetseg-predict and the node pick) scores what it computes")
    p.add_argument('--precision', default='auto', choices=('auto', 'fp32', 'fp16', 'int8'),
                   help="an engine's precision: auto = fp16 on CUDA, else fp32; int8 = the graph "
                        'jetseg-export --int8 calibrated for this checkpoint and --size (backend '
                        'onnxruntime or openvino)')
    p.add_argument('--workers', type=non_negative_int, default=0, help='DataLoader workers')
    p.add_argument('--limit', type=positive_int, default=None, help='evaluate only the first N images')
    p.add_argument('--native-labels', action='store_true',
                   help='score against the labels at their stored size (logits upsampled bilinearly '
                        'to it), as benchmark protocols do; default: at the network input size')
    p.add_argument('--synthetic-scenes', type=positive_int, default=64, help='held-out synthetic scenes')
    p.add_argument('--seed', type=int, default=0,
                   help=f'synthetic: the training seed; scenes start at seed + {SYNTHETIC_VAL_SEED_OFFSET}')
    p.add_argument('--confusion', type=Path, default=Path('confusion.png'), help='confusion-matrix PNG')
    p.add_argument('--json', type=Path, default=None, help='also write the results as JSON here')
    return p


def _dataset(args: argparse.Namespace, size: tuple[int, int], mean, std):
    from .data.transforms import EvalTransform

    tf = EvalTransform(size, mean=tuple(mean), std=tuple(std), native_labels=args.native_labels)
    if args.dataset == 'synthetic':
        from .data.synthetic import SyntheticScenes

        seed = args.seed + SYNTHETIC_VAL_SEED_OFFSET
        return SyntheticScenes(args.synthetic_scenes, size, seed, transform=tf)
    from .data.datasets import DatasetError, build_dataset

    if args.data_root is None:
        raise UsageError(f'--dataset {args.dataset} needs --data-root')
    if not args.data_root.is_dir():
        raise UsageError(f'--data-root {args.data_root}: no such directory')
    try:
        return build_dataset(args.dataset, args.data_root, args.split, tf)
    except (DatasetError, FileNotFoundError, NotADirectoryError, ValueError) as exc:  # ValueError: split
        raise UsageError(str(exc)) from None


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: Path, title: str = '') -> None:
    """Row-normalised confusion matrix: row = true class, column = predicted class."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(class_names)
    side = max(5.0, 0.45 * k + 2.5)
    fig = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap='Blues')
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=class_names, rotation=60, ha='right', fontsize=8)
    ax.set_yticks(range(k), labels=class_names, fontsize=8)
    ax.set(xlabel='predicted', ylabel='true', title=title or 'Confusion matrix (rows normalised)')
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if norm[i, j] >= 0.01:
                    ax.text(j, i, f'{norm[i, j]:.2f}', ha='center', va='center', fontsize=6,
                            color='white' if norm[i, j] > 0.5 else 'black')
    fig.tight_layout()
    fig.savefig(path)


def _images_and_label_list(batch: list[tuple[torch.Tensor, torch.Tensor]]
                           ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.stack([image for image, _ in batch]), [labels for _, labels in batch]


def run_evaluation(model: torch.nn.Module, dataset, num_classes: int, device: torch.device, batch_size: int,
                   workers: int = 0, limit: int | None = None) -> tuple[Any, np.ndarray, float]:
    """(metrics report, confusion matrix counts, model images per second) over a dataset."""
    from .metrics import ConfusionMatrix

    if limit is not None and limit < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(limit))
    # Labels travel as a list: at their stored size (--native-labels) they may differ per image.
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=_images_and_label_list)
    cm = ConfusionMatrix(num_classes)
    model.eval().to(device)
    model_s, images = 0.0, 0
    with torch.inference_mode():
        for x, labels in loader:
            x = x.to(device)
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            logits = model(x)
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            model_s += time.perf_counter() - t0
            images += x.shape[0]
            for one, y in zip(logits, labels, strict=True):
                if one.shape[-2:] != y.shape:
                    one = F.interpolate(one[None].float(), size=tuple(y.shape), mode='bilinear',
                                        align_corners=False)[0]
                cm.update(one.argmax(0)[None].cpu(), y[None])
    report = cm.compute()
    return report, np.asarray(report.confusion), images / max(model_s, 1e-9)


class EngineModel(torch.nn.Module):
    """An inference engine (:mod:`jetseg_core.backends`) as a model: full-size logits, as the network's
    forward returns them (the engine's coarse logits upsampled bilinearly)."""

    def __init__(self, engine: Any) -> None:
        super().__init__()
        self.engine = engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.engine(x).float(), size=x.shape[-2:], mode='bilinear', align_corners=False)


def _engine_model(backend: str, model: torch.nn.Module, meta: Any, size: tuple[int, int], device: str,
                  threads: int | None, precision: str = 'auto'
                  ) -> tuple[torch.nn.Module, torch.device | None, str]:
    """(model, its device, backend label) for ``--backend``; the model itself when that is torch.

    The engine is the one the Segmenter builds (same graph, precision and cache), so the score is
    what jetseg-predict and the node compute.
    """
    from .backends import INT8_ENGINES, resolve_backend
    from .inference import Segmenter

    try:
        name, dev = resolve_backend(backend, device)
        if precision == 'int8' and name not in INT8_ENGINES:
            raise UsageError(f"--precision int8 needs --backend {' or '.join(INT8_ENGINES)} "
                             f"(or auto on CPU), not '{name}'")
        if name == 'torch':
            return model, None, 'torch'
        seg = Segmenter(model, dataclasses.replace(meta, input_size=size), device=dev, precision=precision,
                        num_threads=threads, backend=name,
                        log=lambda line: print(f'jetseg-eval: {line}', file=sys.stderr))
    except ValueError as exc:  # BackendUnavailable: not installed, or no device for it
        raise UsageError(str(exc).splitlines()[0]) from None
    return EngineModel(seg.engine), torch.device(dev), seg.backend


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point `jetseg-eval`."""
    try:
        args = build_parser().parse_args(argv)
        from .checkpoint import NAMED_CHECKPOINTS, CheckpointError, resolve_checkpoint
        from .metrics import format_iou_table

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.dataset != 'synthetic' and (args.data_root is None or not args.data_root.is_dir()):
            raise UsageError(f'--data-root {args.data_root}: no such directory' if args.data_root
                             else f'--dataset {args.dataset} needs --data-root')
        if args.checkpoint not in NAMED_CHECKPOINTS and not Path(args.checkpoint).exists():
            raise UsageError(f'{args.checkpoint}: no such checkpoint file')
        if args.checkpoint == '' and args.dataset == 'synthetic':
            args.checkpoint = 'synthetic'  # the shipped weights that fit the scenes scored
        try:
            shipped = args.checkpoint in NAMED_CHECKPOINTS
            model, meta = resolve_checkpoint(args.checkpoint, args.profile if shipped else None)
        except (CheckpointError, ValueError) as exc:  # ValueError: an unknown --profile
            raise UsageError(str(exc)) from None
        device = select_device(args.device, Dist())
        size = args.size or tuple(meta.input_size)
        dataset = _dataset(args, size, meta.mean, meta.std)
        if len(dataset) == 0:
            raise UsageError(f'{args.dataset} {args.split}: no images')
        classes = getattr(dataset, 'num_classes', meta.num_classes)
        if classes != meta.num_classes:
            raise UsageError(f'{args.dataset} has {classes} classes but the checkpoint predicts '
                             f'{meta.num_classes} ({meta.profile}, trained on {meta.trained_on})')
        from .data.datasets import DatasetError, error_line

        backend = 'torch'
        if args.backend != 'torch' or args.precision == 'int8':
            model, on, backend = _engine_model(args.backend, model, meta, size, args.device, args.threads,
                                               args.precision)
            device = on or device
        try:
            report, matrix, ips = run_evaluation(model, dataset, meta.num_classes, device, args.batch_size,
                                                 args.workers, args.limit)
        except DatasetError as exc:  # a file found unreadable (or with unknown ids) while iterating
            raise UsageError(error_line(exc)) from None
        n = min(len(dataset), args.limit or len(dataset))
        where = f'{args.dataset} {args.split}'
        if args.dataset == 'synthetic':
            where = (f'{args.synthetic_scenes} held-out synthetic scenes '
                     f'(seed {args.seed} + {SYNTHETIC_VAL_SEED_OFFSET})')
        scored = "the labels' stored size" if args.native_labels else 'network size'
        print(f'{meta.profile} ({args.checkpoint or "shipped weights"}) on {where}: '
              f'{n} images at {size[0]}x{size[1]}, scored at {scored}, device {device}, backend {backend}')
        print(format_iou_table(report, list(meta.class_names)))
        print(f'mIoU {100 * report.miou:.2f}%  pixel accuracy {100 * report.pixel_accuracy:.2f}%  '
              f'{ips:.1f} images/s (model, batch {args.batch_size})')
        args.confusion.parent.mkdir(parents=True, exist_ok=True)
        plot_confusion(matrix, list(meta.class_names), args.confusion,
                       title=f'{meta.profile} on {where}: mIoU {100 * report.miou:.1f}%')
        print(f'confusion matrix: {args.confusion}')
        if args.json is not None:
            per_class = [None if not np.isfinite(v) else float(v)
                         for v in np.asarray(report.per_class_iou, dtype=np.float64)]
            result = {
                'checkpoint': args.checkpoint or 'shipped', 'profile': meta.profile, 'dataset': args.dataset,
                'split': args.split, 'images': n, 'input_size': list(size),
                'scored_at': 'native' if args.native_labels else 'network', 'miou': float(report.miou),
                'pixel_accuracy': float(report.pixel_accuracy),
                'per_class_iou': dict(zip(meta.class_names, per_class, strict=True)),
                'absent_classes': [meta.class_names[i] if isinstance(i, int) else i
                                   for i in getattr(report, 'absent_classes', [])],
                'images_per_s': ips, 'device': str(device), 'backend': backend,
                'confusion_matrix': matrix.tolist(),
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))
            print(f'json: {args.json}')
        return 0
    except UsageError as exc:
        return usage_error('jetseg-eval', exc)
    except KeyboardInterrupt:
        print('jetseg-eval: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
