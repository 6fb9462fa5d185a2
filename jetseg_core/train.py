"""jetseg-train: train JetSeg on CamVid, Cityscapes, an image folder or synthetic scenes.

One process trains on CPU or one GPU; `torchrun --nproc-per-node N -m jetseg_core.train ...`
trains data-parallel (DDP, NCCL on CUDA, Gloo on CPU) and only rank 0 writes files.
The output directory receives best/last checkpoints (safetensors, with optimiser state for
`--resume`), a CSV log and a PNG plot of loss and validation mIoU. Ctrl-C stops at the next
step and saves `interrupted.safetensors`, which `--resume` continues from.

Runs are reproducible and resumable exactly: nothing random carries over from one step to the
next. Each epoch's shuffle comes from (seed, epoch), each sample's augmentation from a seed drawn
for that sample in that epoch, and the global RNGs of a step from (seed, rank, epoch, batch). A
checkpoint therefore needs only the epoch and the batch it stopped at: resuming from
`interrupted.safetensors` (Ctrl-C, mid-epoch) continues at that batch, and resuming from
`last.safetensors` after a crash or SIGKILL replays the interrupted epoch from its start, both
ending with the weights of an uninterrupted run (with or without DataLoader workers, whose number
does not change the data). `--time-budget` counts the time of all resumed runs together.
On `--resume`, flags that define the run (profile, activation, size, dataset, loss, optimiser,
schedule, lr, seed, batch size, augmentation...) default to the checkpoint's values; giving one
that disagrees is an error (a different run is a new run, not a resume). `--epochs` and
`--time-budget` may change (the schedule then follows the new length).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from jetseg_core.cli import (
    OneLineParser,
    UsageError,
    non_negative_float,
    non_negative_int,
    parse_size,
    positive_int,
    usage_error,
)
from jetseg_core.malloc import tune_malloc

DATASETS = ('camvid', 'camvid32', 'camvid32to11', 'cityscapes', 'folder', 'synthetic')
LOSSES = ('jetloss', 'ce', 'jetloss+ce')
#: ImageNet statistics: the usual normalisation, stored in every checkpoint so inference matches.
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)
DEFAULT_LR = {'adamw': 2e-3, 'sgd': 2e-2}
CSV_FIELDS = ('epoch', 'train_loss', 'val_miou', 'val_pixel_accuracy', 'lr', 'images_per_s', 'epoch_s',
              'elapsed_s')
#: Train scenes use seeds seed, seed+1, ...; validation scenes start here so they never overlap.
SYNTHETIC_VAL_SEED_OFFSET = 1_000_000


def parse_scale(text: str) -> tuple[float, float]:
    """Parse 'LO,HI' (e.g. 0.5,2.0): the random rescale range of the training augmentation."""
    try:
        lo, hi = (float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'scale must look like LO,HI (e.g. 0.5,2.0), got {text!r}') from None
    if not 0 < lo <= hi <= 8:
        raise argparse.ArgumentTypeError(f'scale {text}: need 0 < LO <= HI <= 8')
    return lo, hi


def build_parser() -> OneLineParser:
    p = OneLineParser(prog='jetseg-train', description=__doc__.splitlines()[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--profile', default='nano', help='model profile: nano, agx or workstation')
    p.add_argument('--activation', default='reu', help='activation of the network')
    p.add_argument('--decoder-stride', type=int, default=4, choices=(2, 4),
                   help="resolution of the decoder's shallow branch: 1/4 (RegSeg-like) or 1/2 (like the "
                        "authors' decoder)")
    p.add_argument('--dataset', default='synthetic', choices=DATASETS)
    p.add_argument('--data-root', type=Path, default=None, help='dataset directory (all but synthetic)')
    p.add_argument('--train-split', default='train')
    p.add_argument('--val-split', default='val')
    p.add_argument('--size', type=parse_size, default=(240, 320), help='network input HxW')
    p.add_argument('--epochs', type=positive_int, default=30)
    p.add_argument('--batch-size', type=positive_int, default=8, help='per process')
    p.add_argument('--optimizer', default='adamw', choices=('adamw', 'sgd'))
    p.add_argument('--schedule', default='poly', choices=('poly', 'cosine'))
    p.add_argument('--lr', type=non_negative_float, default=None,
                   help=f'peak learning rate (default {DEFAULT_LR})')
    p.add_argument('--weight-decay', type=non_negative_float, default=1e-4)
    p.add_argument('--momentum', type=non_negative_float, default=0.9, help='SGD only')
    p.add_argument('--warmup', type=non_negative_float, default=0.03,
                   help='linear warm-up over this fraction of training (of steps, or of --time-budget)')
    p.add_argument('--loss', default='jetloss', choices=LOSSES)
    p.add_argument('--class-weights', default='balanced', choices=('balanced', 'uniform'),
                   help="JetLoss class weights: Cui et al. class-balanced from the training set's pixel "
                        "counts, or uniform ('ce' is always unweighted)")
    p.add_argument('--no-augment', action='store_true', help='no random scale/flip/colour jitter')
    p.add_argument('--scale', type=parse_scale, default=(0.5, 2.0), metavar='LO,HI',
                   help='random rescale range of the training augmentation (RegSeg: 0.5,2.0)')
    p.add_argument('--amp', action='store_true', help='mixed precision (CUDA only)')
    p.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--workers', type=non_negative_int, default=min(4, os.cpu_count() or 1),
                   help='DataLoader workers')
    p.add_argument('--threads', type=positive_int, default=None, help='torch CPU threads per process')
    p.add_argument('--synthetic-scenes', type=positive_int, default=400, help='synthetic training scenes')
    p.add_argument('--synthetic-val-scenes', type=positive_int, default=64, help='held-out synthetic scenes')
    p.add_argument('--time-budget', type=non_negative_float, default=None, metavar='MINUTES',
                   help='stop training after this wall-clock time, then validate and save')
    p.add_argument('--resume', type=Path, default=None, metavar='PATH', help='checkpoint to continue from')
    p.add_argument('--output', type=Path, default=None,
                   help='output directory (default runs/<dataset>-<profile>)')
    p.add_argument('--trained-on', default=None, help='text stored as trained_on in the checkpoints')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.add_argument('--bad-files', default='stop', choices=('stop', 'skip'),
                   help='an image or label file that cannot be read or holds unknown ids: stop with one '
                        'line naming it (exit 2), or skip it (a warning names it; the next readable pair '
                        'takes its place, so batches keep their size) and count it')
    return p


#: Flags that define a run: on --resume they default to the checkpoint's values, and a different
#: value given on the command line is an error.
RUN_FLAGS = ('profile', 'activation', 'decoder_stride', 'dataset', 'train_split', 'size', 'synthetic_scenes',
             'loss', 'class_weights', 'optimizer', 'schedule', 'lr', 'weight_decay', 'momentum', 'warmup',
             'seed', 'batch_size', 'scale', 'no_augment')


def explicit_flags(argv: Sequence[str] | None) -> set[str]:
    """Destinations of the options actually given in argv (not left at their defaults)."""
    parser = build_parser()
    for action in parser._actions:  # noqa: SLF001 (argparse has no public way to drop defaults)
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _json_value(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, as stored in a checkpoint


def _flag_text(dest: str, value: Any) -> str:
    flag = '--' + dest.replace('_', '-')
    if isinstance(value, bool):
        return flag if value else f'no {flag}'
    if dest == 'size':
        return f'{flag} {value[0]}x{value[1]}'
    if dest == 'scale':
        return f'{flag} {value[0]:g},{value[1]:g}'
    return f'{flag} {value}'


def run_record(args: argparse.Namespace) -> dict[str, Any]:
    """The run-defining flags of args, JSON-ready, as stored in every checkpoint."""
    return {k: _json_value(getattr(args, k)) for k in RUN_FLAGS}


def _stored_run(meta: Any, state: dict[str, Any]) -> dict[str, Any]:
    """Run flags recorded in a checkpoint (older checkpoints: what their metadata tells)."""
    if isinstance(state.get('run'), dict):
        return {k: v for k, v in state['run'].items() if k in RUN_FLAGS}
    stored: dict[str, Any] = {'profile': meta.profile, 'activation': meta.activation,
                              'decoder_stride': meta.decoder_stride, 'size': list(meta.input_size)}
    for key in ('dataset', 'loss', 'optimizer', 'schedule', 'lr', 'weight_decay', 'seed'):
        if key in meta.extra:
            stored[key] = meta.extra[key]
    if meta.extra.get('class_weights') in ('balanced', 'uniform'):
        stored['class_weights'] = meta.extra['class_weights']
    return stored


def reconcile_resume(args: argparse.Namespace, explicit: set[str], meta: Any,
                     state: dict[str, Any]) -> list[str]:
    """Take the checkpoint's run flags where none was given; refuse a given flag that disagrees.

    Returns the flags taken over from the checkpoint that differ from the defaults (for a note).
    """
    defaults = vars(build_parser().parse_args([]))
    taken = []
    for dest, stored in _stored_run(meta, state).items():
        given = getattr(args, dest)
        if dest in explicit:
            if _json_value(given) != stored:
                raise UsageError(
                    f'--resume {args.resume}: the run was trained with {_flag_text(dest, stored)}, not '
                    f'{_flag_text(dest, given)}; leave the flag out to continue that run, or start a new '
                    'run without --resume')
            continue
        value = tuple(stored) if isinstance(stored, list) else stored
        if _json_value(defaults.get(dest)) != stored:
            taken.append(_flag_text(dest, value))
        setattr(args, dest, value)
    return taken


# --------------------------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    """Where this process sits in a torchrun job (world_size 1 when run alone)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_dist() -> Dist:
    """Read torchrun's WORLD_SIZE/RANK/LOCAL_RANK; absent means a single process."""
    try:
        world = int(os.environ.get('WORLD_SIZE', '1'))
        rank = int(os.environ.get('RANK', '0'))
        local = int(os.environ.get('LOCAL_RANK', str(rank)))
    except ValueError:
        raise UsageError('WORLD_SIZE/RANK/LOCAL_RANK must be integers') from None
    return Dist(rank=rank, local_rank=local, world_size=max(world, 1))


def select_device(spec: str, dist: Dist) -> torch.device:
    if spec == 'auto':
        spec = 'cuda' if torch.cuda.is_available() else 'cpu'
    if spec.startswith('cuda'):
        if not torch.cuda.is_available():
            raise UsageError(f'--device {spec}: CUDA is not available in this PyTorch build/machine')
        if dist.enabled:
            return torch.device('cuda', dist.local_rank)
        return torch.device(spec)
    if spec != 'cpu':
        raise UsageError(f"--device must be 'auto', 'cpu' or 'cuda[:N]', got {spec!r}")
    return torch.device('cpu')


def training_memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on the CPU, where oneDNN's convolutions, forward and backward, are fastest
    on NHWC memory (``scripts/benchmark_training.py``); the default layout elsewhere."""
    return torch.channels_last if device.type == 'cpu' else torch.contiguous_format


def any_rank(flag: bool, dist: Dist, device: torch.device) -> bool:
    """True on every rank when the flag is set on any rank (keeps ranks stepping in lockstep)."""
    if not dist.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def agree_to_stop(stop_requested: bool, out_of_time: bool, elapsed_s: float, dist: Dist,
                  device: torch.device) -> tuple[bool, bool, float]:
    """(interrupted, out_of_time, elapsed seconds), the same on every rank.

    Both flags travel in one all_reduce, so every rank stops for the same reason: a stop request
    on any rank is an interruption (checkpoint, exit 130), else the budget spent on any rank ends
    training for all (validate, save, exit 0). The elapsed time returned is the largest over the
    ranks, so that every rank computes the same learning rate from it.
    """
    if not dist.enabled:
        return stop_requested, out_of_time and not stop_requested, elapsed_s
    t = torch.tensor([float(stop_requested), float(out_of_time), elapsed_s], dtype=torch.float64,
                     device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    interrupted = bool(t[0].item() > 0)
    return interrupted, bool(t[1].item() > 0) and not interrupted, float(t[2].item())


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch.distributed.barrier()


# ------------------------------------------------------------------------------------------------ seeding
def derive_seed(*keys: int) -> int:
    """A 63-bit seed from a tuple of integers (seed, epoch, ...): distinct tuples, unrelated streams."""
    words = np.random.SeedSequence([k & 0xFFFF_FFFF_FFFF_FFFF for k in keys]).generate_state(2, np.uint64)
    return int(words[0]) >> 1


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random's global generators (numpy and random from the low 32 bits)."""
    torch.manual_seed(seed)
    np.random.seed(seed & 0xFFFF_FFFF)
    random.seed(seed)


class EpochSampler(torch.utils.data.Sampler):
    """(index, sample seed) pairs of one epoch for one rank, derived from (seed, epoch) alone.

    Every rank draws the same permutation and takes its own slice of it (the tail that does not
    divide by the number of ranks is dropped, as DistributedSampler's drop_last does). Each sample
    also gets a seed of its own for this epoch, which drives its augmentation wherever it is loaded
    (main process or any worker, any rank). ``set_epoch(epoch, skip)`` starts an epoch, leaving out
    the first `skip` samples of this rank (the batches a resumed run has already trained on).
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch, self.skip = 1, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _per_rank(self) -> int:
        return self.size // self.world_size

    def __len__(self) -> int:
        return max(0, self._per_rank() - self.skip)

    def __iter__(self):
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=g)
        seeds = torch.randint(0, 2**62, (self.size,), generator=g).tolist()
        usable = self._per_rank() * self.world_size
        mine = order[self.rank:usable:self.world_size][self.skip:]
        for index in mine.tolist():
            yield index, seeds[index]


# --------------------------------------------------------------------------------------------------- data
@dataclass
class DataBundle:
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    class_names: list[str]
    class_colors: list[list[int]]
    pixel_counts: np.ndarray | None
    description: str  # '{epochs}' is filled in with the epochs trained when saving
    skipped: set[str] = field(default_factory=set)  # problems with files already reported


def _palette_for(dataset_name: str, dataset: Any):
    """Class names and colours: from the dataset when it carries them, else the standard label set."""
    from . import palettes

    pal = getattr(dataset, 'palette', None)
    if pal is not None:
        return pal
    name = {'camvid': 'camvid11', 'camvid32to11': 'camvid11', 'synthetic': 'camvid11',
            'camvid32': 'camvid31', 'cityscapes': 'cityscapes19'}.get(dataset_name)
    if name is None:
        raise UsageError(f'dataset {dataset_name!r} does not say its class names')
    return palettes.get_palette(name)


class RenderedScenes(torch.utils.data.Dataset):
    """Synthetic scenes rendered once and kept in memory: rendering costs about as much as a training
    step on a small CPU, and scenes are the same every epoch (augmentation is applied on top)."""

    def __init__(self, scenes: torch.utils.data.Dataset, transform: Any = None) -> None:
        first_rgb, first_lab = scenes.load(0)
        n = len(scenes)
        self.rgb = np.empty((n, *first_rgb.shape), np.uint8)
        self.labels = np.empty((n, *first_lab.shape), np.uint8)
        for i in range(n):
            self.rgb[i], self.labels[i] = scenes.load(i) if i else (first_rgb, first_lab)
        self.palette = getattr(scenes, 'palette', None)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rgb)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.rgb[index], self.labels[index]

    def __getitem__(self, index: int):
        rgb, labels = self.rgb[index], self.labels[index]
        return self.transform(rgb, labels) if self.transform is not None else (rgb, labels)


def maybe_cache(scenes: Any, transform: Any = None, max_bytes: int = 1 << 30) -> torch.utils.data.Dataset:
    """Render synthetic scenes up front when they fit in max_bytes; else render on demand."""
    h, w = scenes.size
    if len(scenes) * h * w * 4 <= max_bytes:
        return RenderedScenes(scenes, transform)
    scenes.transform = transform
    return scenes


class TrainItems(torch.utils.data.Dataset):
    """A data set's raw (rgb, labels) pairs through a transform, as (image, labels, problem) triples.

    Keys are indices, or (index, sample seed) pairs from EpochSampler: the seed drives the random
    transform for that one sample, so its draws depend neither on the worker or rank loading it nor
    on the samples before it. A pair that cannot be read raises DatasetError, or with `skip_bad`
    is replaced by the next readable pair (batches keep their size, ranks stay in step) and its
    problem is returned in the triple for the main process to report and count.
    """

    def __init__(self, dataset: Any, transform: Any, skip_bad: bool = False) -> None:
        self.dataset, self.transform, self.skip_bad = dataset, transform, skip_bad

    @property
    def palette(self) -> Any:
        return getattr(self.dataset, 'palette', None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, str]:
        from .data.datasets import DatasetError

        index, seed = key if isinstance(key, tuple) else (key, None)
        problem = ''
        for attempt in range(len(self.dataset)):
            try:
                rgb, labels = self.dataset.load((index + attempt) % len(self.dataset))
                break
            except DatasetError as exc:
                if not self.skip_bad:
                    raise
                problem = problem or str(exc)
        else:
            raise DatasetError(f'{problem} (and no other file of the data set can be read either)')
        transform = self.transform
        if seed is not None and hasattr(transform, 'generator'):
            transform = copy.copy(transform)
            transform.generator = torch.Generator().manual_seed(seed)
        image, target = transform(rgb, labels)
        return image, target, problem


def count_pixels(dataset: torch.utils.data.Dataset, num_classes: int,
                 on_bad: Any = None) -> np.ndarray:
    """Per-class label pixel counts over a dataset whose items are (rgb, labels) arrays (no transform).

    A label file that cannot be read raises DatasetError, or is left out and passed to
    ``on_bad(message)`` when that is given.
    """
    from .data.datasets import DatasetError

    counts = np.zeros(256, dtype=np.int64)
    for i in range(len(dataset)):
        try:
            if hasattr(dataset, 'load_labels'):
                labels = dataset.load_labels(i)
            elif hasattr(dataset, 'load'):
                labels = dataset.load(i)[1]
            else:
                labels = dataset[i][1]
        except DatasetError as exc:
            if on_bad is None:
                raise
            on_bad(str(exc))
            continue
        labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        counts += np.bincount(labels.astype(np.uint8, copy=False).ravel(), minlength=256)
    return counts[:num_classes]


def loss_name(args: argparse.Namespace) -> str:
    """The loss as named in logs and checkpoints, with its class weighting when it has one."""
    if args.loss == 'ce':
        return 'ce'
    return f'{args.loss} ({"class-balanced" if args.class_weights == "balanced" else "uniform"} weights)'


def warn_bad_file(problem: str, seen: set[str], is_main: bool = True) -> None:
    """One warning per unreadable file (--bad-files skip), with the running count."""
    if problem in seen:
        return
    seen.add(problem)
    if is_main:
        print(f'jetseg-train: warning: skipped {problem} ({len(seen)} skipped so far)', file=sys.stderr,
              flush=True)


def build_data(args: argparse.Namespace, need_counts: bool, is_main: bool = True) -> DataBundle:
    """Training/validation sets with their transforms, class names and (for JetLoss) pixel counts."""
    from .data import transforms as T
    from .data.datasets import DatasetError, build_dataset

    size = args.size
    if args.no_augment:
        train_tf = T.EvalTransform(size, mean=DEFAULT_MEAN, std=DEFAULT_STD)
    else:
        train_tf = T.TrainTransform(size, scale=args.scale, mean=DEFAULT_MEAN, std=DEFAULT_STD)
    val_tf = T.EvalTransform(size, mean=DEFAULT_MEAN, std=DEFAULT_STD)
    skip_bad = getattr(args, 'bad_files', 'stop') == 'skip'

    if args.dataset == 'synthetic':
        from .data.synthetic import SyntheticScenes

        val_seed = args.seed + SYNTHETIC_VAL_SEED_OFFSET
        raw_train = maybe_cache(SyntheticScenes(args.synthetic_scenes, size, args.seed))
        raw_val = maybe_cache(SyntheticScenes(args.synthetic_val_scenes, size, val_seed))
        desc = (f'synthetic CamVid-11-style scenes from jetseg_core.data.synthetic, '
                f'{args.synthetic_scenes} scenes, seed {args.seed}, {size[0]}x{size[1]}, {{epochs}} epochs, '
                f'{loss_name(args)} loss, {args.optimizer}; NOT CamVid')
    else:
        if args.data_root is None:
            raise UsageError(f'--dataset {args.dataset} needs --data-root')
        if not args.data_root.is_dir():
            raise UsageError(f'--data-root {args.data_root}: no such directory')
        try:
            raw_train = build_dataset(args.dataset, args.data_root, args.train_split, None)
            raw_val = build_dataset(args.dataset, args.data_root, args.val_split, None)
        except (DatasetError, FileNotFoundError, NotADirectoryError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        desc = (f'{args.dataset} {args.train_split} split ({args.data_root.name}), {size[0]}x{size[1]}, '
                f'{{epochs}} epochs, {loss_name(args)} loss, {args.optimizer}')
    if len(raw_train) == 0 or len(raw_val) == 0:
        which = 'training' if len(raw_train) == 0 else 'validation'
        raise UsageError(f'dataset {args.dataset}: empty {which} split')
    pal = _palette_for(args.dataset, raw_train)
    skipped: set[str] = set()
    counts = None
    if need_counts:
        on_bad = (lambda problem: warn_bad_file(problem, skipped, is_main)) if skip_bad else None
        try:
            counts = count_pixels(raw_train, pal.num_classes, on_bad)
        except DatasetError as exc:
            raise UsageError(str(exc)) from None
        if not counts.any():
            raise UsageError(f'dataset {args.dataset}: no labelled pixel in the training split')
    colors = [[int(c) for c in rgb] for rgb in pal.colors]
    return DataBundle(TrainItems(raw_train, train_tf, skip_bad), TrainItems(raw_val, val_tf, skip_bad),
                      list(pal.class_names), colors, counts, desc, skipped)


def _worker_init(worker_id: int) -> None:
    # Ctrl-C goes to the whole process group: workers ignore it and the main process decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # torch seeded this worker from the loader's generator (seeded per rank) + worker_id.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loaders(data: DataBundle, args: argparse.Namespace, dist: Dist, device: torch.device):
    """Training loader over an EpochSampler (returned too, for set_epoch) and the validation loader.

    Each rank's loader generator, hence its workers' seeds, is derived from (seed, rank).
    """
    sampler = EpochSampler(len(data.train), args.seed, dist.rank, dist.world_size)
    gen = torch.Generator().manual_seed(derive_seed(args.seed, dist.rank))
    drop_last = len(data.train) >= args.batch_size * dist.world_size
    kw: dict[str, Any] = {'num_workers': args.workers, 'pin_memory': device.type == 'cuda',
                          'worker_init_fn': _worker_init if args.workers > 0 else None,
                          'persistent_workers': args.workers > 0}
    train = torch.utils.data.DataLoader(data.train, batch_size=args.batch_size, sampler=sampler,
                                        drop_last=drop_last, generator=gen, **kw)
    val = torch.utils.data.DataLoader(data.val, batch_size=args.batch_size, shuffle=False, **kw)
    return train, val, sampler


# ------------------------------------------------------------------------------------------------ schedule
def lr_factor(progress: float, warmup: float, schedule: str) -> float:
    """Learning-rate multiplier at a training progress in 0..1: linear warm-up over the first `warmup`
    fraction, then poly (power 0.9) or cosine decay to 0 at progress 1.

    Progress rather than steps, so a run stopped by --time-budget warms up and decays within its budget.
    """
    progress = min(max(progress, 0.0), 1.0)
    decay = (1.0 - progress) ** 0.9 if schedule == 'poly' else 0.5 * (1.0 + math.cos(math.pi * progress))
    if warmup > 0 and progress < warmup:
        decay *= max(progress / warmup, 0.01)
    return decay


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only: decaying BN and biases only hurts a tiny network."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{'params': decay, 'weight_decay': args.weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    if args.optimizer == 'sgd':
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=args.momentum,
                                                     nesterov=args.momentum > 0)
    else:
        opt = torch.optim.AdamW(groups, lr=lr)
    for g in opt.param_groups:
        g['initial_lr'] = lr
    return opt


# ------------------------------------------------------------------------------------------------ logging
@dataclass
class History:
    rows: list[dict[str, float]] = field(default_factory=list)

    def write_csv(self, path: Path) -> None:
        tmp = path.with_suffix('.csv.tmp')
        with open(tmp, 'w', newline='') as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            for row in self.rows:
                w.writerow({k: f'{row[k]:.6g}' if isinstance(row[k], float) else row[k] for k in CSV_FIELDS})
        os.replace(tmp, path)

    def plot(self, path: Path) -> None:
        """Loss and mIoU per epoch; drawn with the Agg canvas directly (no display, no pyplot state)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        fig = Figure(figsize=(9, 3.6), dpi=100)
        FigureCanvasAgg(fig)
        epochs = [r['epoch'] for r in self.rows]
        ax1, ax2 = fig.subplots(1, 2)
        ax1.plot(epochs, [r['train_loss'] for r in self.rows], marker='o', color='tab:red')
        ax1.set(xlabel='epoch', ylabel='training loss', title='Loss')
        ax2.plot(epochs, [100 * r['val_miou'] for r in self.rows], marker='o', color='tab:blue')
        ax2.set(xlabel='epoch', ylabel='mIoU (%)', title='Validation mIoU')
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        fig.savefig(path)


# ---------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def evaluate_model(model: nn.Module, loader, num_classes: int, device: torch.device, amp: bool = False,
                   on_bad: Any = None):
    """Confusion-matrix report (mIoU, per-class IoU, pixel accuracy) of a model over a loader.

    Batches are (images, labels) or TrainItems' (images, labels, problems); problems go to on_bad.
    """
    from .metrics import ConfusionMatrix

    cm = ConfusionMatrix(num_classes)
    was_training = model.training
    model.eval()
    for batch in loader:
        images, labels = batch[0], batch[1]
        if on_bad is not None and len(batch) > 2:
            for problem in batch[2]:
                if problem:
                    on_bad(problem)
        images = images.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, enabled=amp):
            logits = model(images)
        cm.update(logits.argmax(1).cpu(), labels)
    model.train(was_training)
    return cm.compute()


# ------------------------------------------------------------------------------------------------ training
class StopRequest:
    """Ctrl-C/SIGTERM handler: ask for a clean stop (checkpoint) at the next step.

    A second Ctrl-C aborts at once. SIGTERM only ever asks for the clean stop: torchrun answers
    Ctrl-C by sending SIGTERM to its workers, which must not turn into an abort without saving.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = True
        print(f'\njetseg-train: {signal.Signals(signum).name}: saving a checkpoint after this step '
              '(Ctrl-C again aborts)', file=sys.stderr, flush=True)


def _package_version() -> str:
    from . import __version__

    return __version__


def _resume_state(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Read --resume's train state and settle the run flags against it (see the module docstring)."""
    from .checkpoint import CheckpointError, read_checkpoint_meta, restore_training_state

    if not args.resume.exists():
        raise UsageError(f'--resume {args.resume}: no such file')
    try:  # the reader names a directory, FIFO or device given as the checkpoint
        meta = read_checkpoint_meta(args.resume)
        state = restore_training_state(args.resume, None)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    explicit = getattr(args, 'explicit', None)
    if explicit is None:  # called without main(): flags that differ from their defaults were given
        defaults = vars(build_parser().parse_args([]))
        explicit = {k for k in RUN_FLAGS if getattr(args, k) != defaults[k]}
    taken = reconcile_resume(args, explicit, meta, state)
    if taken:
        log(f'jetseg-train: continuing the run of {args.resume} with its {", ".join(taken)}')
    return state


def train(args: argparse.Namespace, dist: Dist) -> int:
    """The training run behind main(); returns the exit code."""
    from .checkpoint import (
        CheckpointError,
        CheckpointMeta,
        load_checkpoint,
        restore_training_state,
        save_checkpoint,
    )
    from .data.datasets import DatasetError, error_line
    from .loss import build_loss
    from .model import build_model

    log = print if dist.is_main else (lambda *a, **k: None)
    state: dict[str, Any] = _resume_state(args, log) if args.resume is not None else {}
    if args.lr is None:
        args.lr = DEFAULT_LR[args.optimizer]
    device = select_device(args.device, dist)
    if args.amp and device.type != 'cuda':
        raise UsageError('--amp needs a CUDA device')
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)  # the same initial weights on every rank
    out_dir: Path = args.output or Path('runs') / f'{args.dataset}-{args.profile}'

    data = build_data(args, need_counts=args.loss != 'ce' and args.class_weights == 'balanced',
                      is_main=dist.is_main)
    num_classes = len(data.class_names)
    try:
        model = build_model(args.profile, num_classes, activation=args.activation,
                            decoder_stride=args.decoder_stride)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    optimizer = build_optimizer(model, args)
    scaler = torch.amp.GradScaler('cuda', enabled=args.amp)
    start_epoch, best_miou, history = 1, -1.0, History()
    resume_batches, elapsed_before = 0, 0.0
    partial = {'loss_sum': 0.0, 'loss_n': 0}
    if args.resume is not None:
        try:
            loaded, _ = load_checkpoint(args.resume, profile=args.profile, num_classes=num_classes)
            model.load_state_dict(loaded.state_dict())
            restore_training_state(args.resume, optimizer)
        except CheckpointError as exc:
            raise UsageError(str(exc)) from None
        except (RuntimeError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            raise UsageError(f'{args.resume}: does not match this model/optimiser ({first})') from None
        for g in optimizer.param_groups:  # the schedule's peak: this run's (= the checkpoint's) lr
            g['initial_lr'] = args.lr
        if args.amp and state.get('scaler'):
            scaler.load_state_dict(state['scaler'])
        start_epoch = int(state.get('epoch', 0)) + 1
        resume_batches = int(state.get('batches_done', 0))
        best_miou = float(state.get('best_miou', -1.0))
        history.rows = [dict(r) for r in state.get('history', [])]
        logged = history.rows[-1]['elapsed_s'] if history.rows else 0.0
        elapsed_before = float(state.get('elapsed_s', logged))
        partial = {'loss_sum': float(state.get('epoch_loss_sum', 0.0)),
                   'loss_n': int(state.get('epoch_loss_n', 0))}
        where = (f'in epoch {start_epoch} after {resume_batches} batches' if resume_batches
                 else f'after epoch {start_epoch - 1}')
        log(f'jetseg-train: resuming {args.resume} {where} (best mIoU {best_miou:.4f}, '
            f'{elapsed_before / 60:.1f} min trained)')
    model.to(device, memory_format=training_memory_format(device))
    for g in optimizer.param_groups:  # optimiser tensors follow the model
        for p in g['params']:
            for k, v in optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and k != 'step':
                    optimizer.state[p][k] = v.to(device)
    criterion = build_loss(args.loss, num_classes, pixel_counts=data.pixel_counts).to(device)

    net: nn.Module = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None)
    train_loader, val_loader, sampler = make_loaders(data, args, dist, device)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise UsageError(f'training set has {len(data.train)} images: fewer than one batch per process')
    if resume_batches > steps_per_epoch:
        raise UsageError(f'--resume {args.resume}: stopped after batch {resume_batches} of an epoch, but '
                         f'this run has {steps_per_epoch} batches per epoch')
    total_steps = steps_per_epoch * args.epochs

    meta_base = {'profile': args.profile, 'num_classes': num_classes, 'class_names': data.class_names,
                 'class_colors': data.class_colors, 'input_size': tuple(args.size),
                 'mean': list(DEFAULT_MEAN), 'std': list(DEFAULT_STD), 'activation': args.activation,
                 'decoder_stride': args.decoder_stride, 'package_version': _package_version()}

    augment = 'none' if args.no_augment else f'scale {args.scale[0]:g}-{args.scale[1]:g}, hflip, jitter'
    budget_s = args.time_budget * 60 if args.time_budget is not None else None
    t_start = time.monotonic()

    def elapsed() -> float:
        """Training time of this run and every run it resumes (what --time-budget counts)."""
        return elapsed_before + time.monotonic() - t_start

    def save(path: Path, epoch: int, miou: float, batches_done: int = 0,
             epoch_loss: tuple[float, int] = (0.0, 0)) -> None:
        extra = {'epoch': epoch, 'miou': miou, 'best_miou': best_miou, 'dataset': args.dataset,
                 'loss': args.loss, 'class_weights': 'none' if args.loss == 'ce' else args.class_weights,
                 'optimizer': args.optimizer, 'schedule': args.schedule,
                 'batch_size': args.batch_size * dist.world_size, 'epochs': args.epochs, 'seed': args.seed,
                 'lr': args.lr, 'weight_decay': args.weight_decay,
                 'augment': augment, 'time_budget_min': args.time_budget, 'steps': step,
                 'skipped_files': len(data.skipped)}
        train_state = {'epoch': epoch, 'best_miou': best_miou, 'history': history.rows, 'global_step': step,
                       'batches_done': batches_done, 'epoch_loss_sum': epoch_loss[0],
                       'epoch_loss_n': epoch_loss[1], 'elapsed_s': elapsed(), 'run': run_record(args),
                       'world_size': dist.world_size, 'scaler': scaler.state_dict() if args.amp else {}}
        trained_on = args.trained_on or data.description.replace('{epochs}', str(epoch))
        save_checkpoint(path, model, CheckpointMeta(**meta_base, trained_on=trained_on, extra=extra),
                        optimizer=optimizer, train_state=train_state)

    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    log(f'jetseg-train: {args.profile} on {args.dataset} ({len(data.train)} train / {len(data.val)} val '
        f'images, {num_classes} classes) at {args.size[0]}x{args.size[1]}, {loss_name(args)} loss, '
        f'{args.optimizer} {args.schedule}, device {device}'
        + (f', {dist.world_size} processes' if dist.enabled else ''))
    if start_epoch > args.epochs:
        log(f'jetseg-train: already trained {start_epoch - 1} epochs (--epochs {args.epochs}); nothing to do')
        return 0

    def report_bad(problem: str) -> None:
        if args.bad_files == 'stop':
            raise DatasetError(problem)
        warn_bad_file(problem, data.skipped, dist.is_main or dist.enabled)

    stop = StopRequest()
    stop.install()
    step = (start_epoch - 1) * steps_per_epoch + resume_batches
    interrupted = out_of_time = False
    agreed_elapsed = elapsed_before
    miou = best_miou
    log(f'jetseg-train: training epochs {start_epoch}..{args.epochs}, {steps_per_epoch} steps each, '
        f'output {out_dir}', flush=True)
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            batch = resume_batches if epoch == start_epoch else 0
            sampler.set_epoch(epoch, batch * args.batch_size)
            net.train()
            t_epoch = last_note = time.monotonic()
            loss_sum, loss_n = (partial['loss_sum'], partial['loss_n']) if batch else (0.0, 0)
            images_seen, lr_now = 0, 0.0
            bar = None
            if dist.is_main and not args.no_progress:
                from tqdm import tqdm

                bar = tqdm(total=steps_per_epoch, initial=batch, desc=f'epoch {epoch}/{args.epochs}',
                           leave=True, dynamic_ncols=True, file=sys.stderr)
            for images, labels, problems in train_loader:
                for problem in problems:
                    if problem:
                        report_bad(problem)
                seed_everything(derive_seed(args.seed, dist.rank, epoch, batch))
                progress = step / total_steps
                if budget_s:
                    progress = max(progress, agreed_elapsed / budget_s)
                for g in optimizer.param_groups:
                    g['lr'] = lr_now = g['initial_lr'] * lr_factor(progress, args.warmup, args.schedule)
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with torch.autocast(device_type=device.type, enabled=args.amp):
                    logits = net(images)
                loss = criterion(logits.float(), labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                batch += 1
                loss_sum += float(loss.detach())
                loss_n += 1
                images_seen += images.shape[0] * dist.world_size
                if bar is not None:
                    rate = images_seen / max(time.monotonic() - t_epoch, 1e-9)
                    bar.set_postfix(loss=f'{loss_sum / loss_n:.4f}', img_s=f'{rate:.1f}', lr=f'{lr_now:.2e}')
                    bar.update(1)
                elif dist.is_main and time.monotonic() - last_note >= 60:  # a heartbeat for logs
                    last_note = time.monotonic()
                    rate = images_seen / max(last_note - t_epoch, 1e-9)
                    log(f'  epoch {epoch} step {batch}/{steps_per_epoch} loss {loss_sum / loss_n:.4f} '
                        f'{rate:.1f} img/s lr {lr_now:.2e}', flush=True)
                local_elapsed = elapsed()
                interrupted, out_of_time, agreed_elapsed = agree_to_stop(
                    stop.requested, budget_s is not None and local_elapsed >= budget_s, local_elapsed,
                    dist, device)
                if interrupted or out_of_time:
                    break
            if bar is not None:
                bar.close()
            epoch_s = time.monotonic() - t_epoch
            if interrupted:
                # Weights are part-way through this epoch: resuming continues it at the next batch.
                if dist.is_main:
                    path = out_dir / 'interrupted.safetensors'
                    save(path, epoch - 1, miou, batches_done=batch, epoch_loss=(loss_sum, loss_n))
                    log(f'jetseg-train: interrupted in epoch {epoch} after batch {batch}; saved {path} '
                        f'(resume with --resume {path})', flush=True)
                barrier(dist)
                return 130
            if dist.is_main:
                report = evaluate_model(model, val_loader, num_classes, device, amp=args.amp,
                                        on_bad=report_bad)
                miou = float(report.miou)
                history.rows.append({
                    'epoch': epoch, 'train_loss': loss_sum / max(loss_n, 1), 'val_miou': miou,
                    'val_pixel_accuracy': float(report.pixel_accuracy), 'lr': lr_now,
                    'images_per_s': images_seen / max(epoch_s, 1e-9), 'epoch_s': epoch_s,
                    'elapsed_s': elapsed()})
                improved = miou > best_miou
                best_miou = max(best_miou, miou)
                save(out_dir / 'last.safetensors', epoch, miou)
                if improved:
                    save(out_dir / 'best.safetensors', epoch, miou)
                history.write_csv(out_dir / 'log.csv')
                history.plot(out_dir / 'training.png')
                log(f'jetseg-train: epoch {epoch}/{args.epochs} loss {loss_sum / max(loss_n, 1):.4f} '
                    f'val mIoU {100 * miou:.2f}% pixel acc {100 * float(report.pixel_accuracy):.2f}% '
                    f'best {100 * best_miou:.2f}%' + (' (saved best)' if improved else '')
                    + (f'; {len(data.skipped)} unreadable file(s) skipped so far' if data.skipped else ''),
                    flush=True)
            barrier(dist)
            if out_of_time:
                log(f'jetseg-train: time budget of {args.time_budget:g} min reached in epoch {epoch}',
                    flush=True)
                break
            if any_rank(stop.requested, dist, device):
                if dist.is_main:
                    path = out_dir / 'last.safetensors'
                    log(f'jetseg-train: interrupted after epoch {epoch}; resume with --resume {path}',
                        flush=True)
                return 130
    except DatasetError as exc:  # --bad-files stop, or nothing readable left: one line, exit 2
        print(f'jetseg-train: error: {error_line(exc)}', file=sys.stderr, flush=True)
        return 2
    finally:
        stop.restore()
    log(f'jetseg-train: done; best val mIoU {100 * best_miou:.2f}%; checkpoints in {out_dir}', flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point `jetseg-train`."""
    dist = Dist()
    try:
        args = build_parser().parse_args(argv)
        args.explicit = explicit_flags(argv)
        if args.dataset != 'synthetic' and args.data_root is None:
            raise UsageError(f'--dataset {args.dataset} needs --data-root')
        if args.workers < 0:
            raise UsageError('--workers must be >= 0')
        dist = detect_dist()
        if dist.enabled:
            backend = 'nccl' if torch.cuda.is_available() and args.device != 'cpu' else 'gloo'
            if backend == 'nccl':
                torch.cuda.set_device(dist.local_rank)
            torch.distributed.init_process_group(backend=backend)
        else:
            # Batches and activations are reallocated every step. Not under torchrun: with it a
            # gloo rank aborted at exit ('terminate called without an active exception') in 3 of
            # 18 runs on a loaded machine, and in none of 22 without it.
            tune_malloc()
        return train(args, dist)
    except UsageError as exc:
        return usage_error('jetseg-train', exc) if dist.is_main else 2
    except KeyboardInterrupt:
        if dist.is_main:
            print('jetseg-train: interrupted before a checkpoint could be saved', file=sys.stderr)
        return 130
    finally:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == '__main__':
    sys.exit(main())
