#!/usr/bin/env python3
"""Training throughput per profile on the CPU, three variants interleaved in one process:

- plain autograd in PyTorch's default (NCHW) memory layout;
- the training paths of :class:`jetseg_core.layers.DilatedDepthwiseConv` (undilated forms of the
  dilated depthwise convs) and :class:`jetseg_core.layers.REU` (a hand-written backward);
- the training paths on channels_last (NHWC) memory: what ``jetseg-train`` runs on a CPU
  (:func:`jetseg_core.train.training_memory_format`).

One step is what ``jetseg-train`` does per batch: forward, JetLoss+CE, backward, AdamW update, on
random images (throughput does not depend on the pixels). Prints images/s (median over the timed
steps) for each profile and variant, and the ratio of the last to the first.

    python scripts/benchmark_training.py --profiles nano,agx --size 240x320 --batch-size 8 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from copy import deepcopy
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from jetseg_core.cli import parse_size
from jetseg_core.layers import REU, DilatedDepthwiseConv
from jetseg_core.loss import build_loss
from jetseg_core.model import build_model

#: name: (training paths on, memory layout)
VARIANTS = {'plain autograd': (False, torch.contiguous_format),
            'training paths': (True, torch.contiguous_format),
            'training paths, channels_last (jetseg-train)': (True, torch.channels_last)}
TRAINING_PATHS = (DilatedDepthwiseConv, REU)  # the layers with a switchable training path


def step_seconds(model, optimizer, criterion, images, labels, fast: bool) -> float:
    for layer in TRAINING_PATHS:
        layer.fast_training = fast
    t0 = time.perf_counter()
    loss = criterion(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--profiles', default='nano,agx', help='comma-separated profiles')
    p.add_argument('--size', type=parse_size, default=(240, 320), help='training crop HxW')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--steps', type=int, default=6, help='timed steps per variant (after one warm-up each)')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f'training step, batch {args.batch_size} at {args.size[0]}x{args.size[1]}, {args.threads} threads, '
          f'median of {args.steps} steps per variant, variants alternating')
    print('| profile | ' + ' | '.join(f'{v} (img/s)' for v in VARIANTS) + ' | speed-up |')
    print('|---|' + '---|' * (len(VARIANTS) + 1))
    for profile in args.profiles.split(','):
        torch.manual_seed(0)
        model = build_model(profile, 11).train()
        criterion = build_loss('jetloss+ce', 11)
        runs = {}  # each variant trains its own copy (same initial weights) in its own layout
        for name, (_, layout) in VARIANTS.items():
            replica = deepcopy(model).to(memory_format=layout)
            runs[name] = (replica, torch.optim.AdamW(replica.parameters(), lr=1e-4))
        images = torch.randn(args.batch_size, 3, *args.size)
        labels = torch.randint(0, 11, (args.batch_size, *args.size))
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for i in range(args.steps + 1):
            for name, (fast, _) in VARIANTS.items():
                t = step_seconds(*runs[name], criterion, images, labels, fast)
                if i:  # the first round warms up allocator and kernels
                    times[name].append(t)
        rates = [args.batch_size / statistics.median(times[v]) for v in VARIANTS]
        print(f'| {profile} | ' + ' | '.join(f'{r:.2f}' for r in rates) + f' | {rates[-1] / rates[0]:.2f}x |',
              flush=True)
    for layer in TRAINING_PATHS:
        layer.fast_training = True


if __name__ == '__main__':
    main()
