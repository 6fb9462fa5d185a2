#!/usr/bin/env python3
"""Compare JetLoss, cross-entropy and JetLoss+CE by training nano on synthetic scenes.

Every loss gets the same data (same scenes, seed and augmentation), the same optimiser and
schedule and the same wall-clock budget (`jetseg-train --time-budget`); the schedule decays to
zero at the end of the budget. Each run is a separate process so thread settings and memory do
not leak between runs. Prints a markdown table of validation mIoU on held-out scenes.

    python scripts/benchmark_losses.py --minutes 10 --threads 2
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--minutes', type=float, default=10.0, help='training wall-clock budget per loss')
    p.add_argument('--losses', default='jetloss,ce,jetloss+ce',
                   help="comma-separated; a ':uniform' suffix trains JetLoss with uniform class weights "
                        "instead of class-balanced ones (e.g. jetloss:uniform)")
    p.add_argument('--profile', default='nano')
    p.add_argument('--size', default='192x256', help='network input HxW')
    p.add_argument('--scenes', type=int, default=300, help='synthetic training scenes')
    p.add_argument('--val-scenes', type=int, default=48, help='held-out synthetic scenes')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--optimizer', default='adamw')
    p.add_argument('--lr', type=float, default=None)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--workers', type=int, default=0)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--output', type=Path, default=Path('runs/loss_benchmark'))
    p.add_argument('--markdown', type=Path, default=None, help='also write the table to this file')
    return p.parse_args(argv)


def read_log(path: Path) -> list[dict[str, float]]:
    with open(path, newline='') as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def run_one(spec: str, args: argparse.Namespace) -> dict[str, object]:
    loss, _, weights = spec.partition(':')
    out = args.output / spec.replace('+', '_plus_').replace(':', '_')
    cmd = [sys.executable, '-m', 'jetseg_core.train', '--profile', args.profile, '--dataset', 'synthetic',
           '--synthetic-scenes', str(args.scenes), '--synthetic-val-scenes', str(args.val_scenes),
           '--size', args.size, '--epochs', '1000', '--time-budget', str(args.minutes),
           '--batch-size', str(args.batch_size), '--optimizer', args.optimizer, '--loss', loss,
           '--threads', str(args.threads), '--workers', str(args.workers), '--seed', str(args.seed),
           '--class-weights', weights or 'balanced', '--no-progress', '--output', str(out)]
    if args.lr is not None:
        cmd += ['--lr', str(args.lr)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    env.setdefault('OMP_WAIT_POLICY', 'PASSIVE')  # no spinning OpenMP threads on a shared CPU
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise SystemExit(f'{spec}: training failed (exit {proc.returncode}):\n' + '\n'.join(tail))
    rows = read_log(out / 'log.csv')
    from jetseg_core.checkpoint import restore_training_state

    state = restore_training_state(out / 'last.safetensors', None)
    label = 'ce (unweighted)' if loss == 'ce' else f"{loss} ({weights or 'class-balanced'} weights)"
    return {'loss': label, 'epochs': len(rows), 'steps': int(state.get('global_step', 0)),
            'best': max(r['val_miou'] for r in rows), 'final': rows[-1]['val_miou'],
            'pixel_acc': rows[-1]['val_pixel_accuracy'], 'train_loss': rows[-1]['train_loss'], 'wall_s': wall}


def table(results: list[dict[str, object]], args: argparse.Namespace) -> str:
    header = (f'Loss benchmark: {args.profile}, {args.scenes} synthetic scenes at {args.size}, batch '
              f'{args.batch_size}, {args.optimizer} poly, {args.minutes:g} min of training per loss on '
              f'{args.threads} thread(s); validation on {args.val_scenes} held-out scenes (uniformly random '
              f'labels score about 5% mIoU).')
    lines = [header, '',
             '| loss | epochs | steps | final val mIoU | best val mIoU | final pixel acc |',
             '|---|---|---|---|---|---|']
    for r in results:
        lines.append(f"| {r['loss']} | {r['epochs']} | {r['steps']} | {100 * r['final']:.1f}% | "
                     f"{100 * r['best']:.1f}% | {100 * r['pixel_acc']:.1f}% |")
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    for loss in [s.strip() for s in args.losses.split(',') if s.strip()]:
        print(f'training with {loss} for {args.minutes:g} min ...', flush=True)
        r = run_one(loss, args)
        print(f"  {loss}: final val mIoU {100 * r['final']:.1f}% after {r['epochs']} epochs / "
              f"{r['steps']} steps", flush=True)
        results.append(r)
    text = table(results, args)
    print(text)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
