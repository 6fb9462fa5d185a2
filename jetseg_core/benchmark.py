"""Side-by-side CPU/GPU timing of the inference variants: ``jetseg-benchmark``.

Shared machines are noisy, so the variants run interleaved (one frame each, in a
rotating order) inside one process, and the table reports medians, p95 and the
ratio of medians to the naive eager loop. Every timing is end to end for one
uint8 frame: preprocessing, network, argmax and resize back to the frame size; for the
Segmenter variants the table also splits out preprocess, network and postprocess.

Back to back, each frame finds the caches warm from the one before. A node fed by a camera
idles between frames and starts each one cold: ``--gap-ms 15`` (about a 30 Hz camera with
the nano network) idles that long before every timed frame to show what the node sees.

Variants:
  eager      the loop one would write first: no_grad, BN unfolded, NCHW, argmax
  unfolded   Segmenter in eager PyTorch, nothing rewritten (isolates the Segmenter's own gains)
  folded     + BN folded
  rewritten  + channels_last and jetseg_core.fuse.rewrite_for_cpu (dense 1x1 convs, no channel
             shuffles, no width-dilated depthwise convs)
  graph      + run as a frozen TorchScript graph: the Segmenter's CPU defaults with backend 'torch'

Backends (``--backend torch,openvino,onnxruntime``; see jetseg_core.backends): the Segmenter with
each backend, side by side with the same preprocessing and class decision; on their own unless
``--variants`` is given too. An engine runs the graph the Segmenter gives it by default (OpenVINO
fp32: with the CPU rewrites, i.e. dense 1x1 convs, no shuffles, undilated; the others: the plain
folded one); ``+rewrites`` or ``+plain`` after its name chooses the graph. ``onnxruntime-int8`` and
``openvino-int8`` run the int8 graph ``jetseg-export --int8`` calibrated for the same ``--checkpoint``
and ``--size`` (calibrate it first). The header gives the
network's params and GMACs; every row its median and p90, and the share of pixels whose labels
equal the torch backend's.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from jetseg_core.backends import BACKENDS, INT8_ENGINES
from jetseg_core.checkpoint import CheckpointError, CheckpointMeta, resolve_checkpoint
from jetseg_core.cli import OneLineParser, UsageError, parse_size, positive_int_list, usage_error
from jetseg_core.inference import Segmenter
from jetseg_core.malloc import tune_malloc
from jetseg_core.profiles import DEFAULT_PRECISION, resolve_thread_setting

VARIANTS = ('eager', 'unfolded', 'folded', 'rewritten', 'graph')
REWRITTEN = '+rewrites'  # an engine given the CPU-rewritten graph (dense 1x1s, no shuffles, undilated)
PLAIN = '+plain'  # an engine given the plain folded graph
GRAPHS = {REWRITTEN: True, PLAIN: False}
INT8 = '-int8'  # a CPU engine on the int8 graph jetseg-export --int8 calibrated (precision 'int8')


def _variant_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(',') if v.strip()]
    bad = [n for n in names if n not in VARIANTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {', '.join(bad) or text!r}; "
                                         f"valid: {', '.join(VARIANTS)}")
    return names


def _graph_suffix(name: str) -> str:
    return next((s for s in GRAPHS if name.endswith(s)), '')


def _backend_list(text: str) -> list[str]:
    """'torch,openvino,openvino+plain' -> names; '+rewrites' / '+plain' choose an engine's graph."""
    names = [v.strip().lower() for v in text.split(',') if v.strip()]
    bad = [n for n in names if n.removesuffix(_graph_suffix(n)) not in BACKENDS
           and n.removesuffix(INT8) not in INT8_ENGINES
           or (_graph_suffix(n) and n.removesuffix(_graph_suffix(n)) in ('torch', 'auto'))]
    if bad or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"bad backend list {text!r} (each once, from {', '.join(BACKENDS)}; "
                                         f"an engine may take '{REWRITTEN}' or '{PLAIN}', "
                                         f"{' and '.join(INT8_ENGINES)} '{INT8}')")
    return names


def _eager_runner(model: torch.nn.Module, meta: CheckpointMeta, device: torch.device) -> Callable:
    """The straightforward loop: what the Segmenter is measured against."""
    model = model.to(device).eval()
    mean = torch.tensor(meta.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(meta.std, device=device).view(1, 3, 1, 1)
    size = tuple(meta.input_size)

    def run(rgb: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None].float() / 255.0
        if tuple(x.shape[2:]) != size:
            x = F.interpolate(x, size=size, mode='bilinear', align_corners=False)
        with torch.no_grad():
            labels = model((x - mean) / std).argmax(1, keepdim=True).float()
        labels = F.interpolate(labels, size=rgb.shape[:2], mode='nearest')
        return labels[0, 0].to(torch.uint8).cpu().numpy()

    return run


def _frame(size: tuple[int, int]) -> np.ndarray:
    """A synthetic street scene (realistic value ranges) or, without it, noise."""
    try:
        from jetseg_core.data.synthetic import generate_scene

        return generate_scene(0, size)[0]
    except ImportError:
        return np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_benchmark(profile: str, size: tuple[int, int], frame_size: tuple[int, int] | None,
                  threads: list[int] | None, iterations: int, warmup: int, variants: list[str],
                  checkpoint: str, device: str, gap_ms: float = 0.0,
                  out=None, backends: Sequence[str] = ()) -> dict[tuple[int, str], list[float]]:
    """Time the variants interleaved; print the table; return raw times (ms) per (threads, variant).

    ``threads`` None or empty: the profile's best on the device, as the node and jetseg-predict run it.
    ``backends``: Segmenter backends to time as further rows (named after the backend).
    """
    out = out or sys.stdout
    model, meta = resolve_checkpoint(checkpoint, profile)
    if checkpoint.strip() == 'untrained':
        meta.input_size = size  # random weights: run them at the size asked for
    frame_size = frame_size or tuple(meta.input_size)
    frame = _frame(frame_size)
    plain = {'fold_bn': False, 'cpu_rewrites': False, 'channels_last': False, 'torchscript': False}
    options = {'unfolded': plain,
               'folded': {**plain, 'fold_bn': True},
               'rewritten': {**plain, 'fold_bn': True, 'cpu_rewrites': True, 'channels_last': True},
               'graph': {'fold_bn': True, 'cpu_rewrites': True, 'channels_last': True, 'torchscript': True}}
    runners: dict[str, Callable] = {}
    segmenters: dict[str, Segmenter] = {}
    for name in variants:
        if name == 'eager':
            runners[name] = _eager_runner(model, meta, torch.device('cuda' if device == 'cuda' else 'cpu'))
        else:
            seg = Segmenter(model, meta, device=device, backend='torch', **options[name])
            segmenters[name] = seg
            runners[name] = lambda rgb, seg=seg: seg.segment(rgb).labels
    for name in backends:
        suffix = _graph_suffix(name)
        seg = Segmenter(model, meta, device=device, backend=name.removesuffix(suffix).removesuffix(INT8),
                        cpu_rewrites=GRAPHS.get(suffix),
                        precision='int8' if name.endswith(INT8) else DEFAULT_PRECISION,
                        log=lambda line: print(f'jetseg-benchmark: {line}', file=sys.stderr))
        segmenters[name] = seg
        runners[name] = lambda rgb, seg=seg: seg.segment(rgb).labels
    variants = list(variants) + list(backends)
    # The reference labels: the torch backend's (the graph variant runs the same, on CPU).
    torch_path = (segmenters.get('torch') or segmenters.get('graph')
                  or Segmenter(model, meta, device=device, backend='torch'))
    dev = next(iter(segmenters.values())).device if segmenters else device
    if not threads:
        threads = [resolve_thread_setting(meta.profile, dev).count]
    h, w = meta.input_size
    print(f'JetSeg {profile} ({meta.num_classes} classes), network {h}x{w}, frame '
          f'{frame_size[0]}x{frame_size[1]}, device {dev}, torch {torch.__version__}, '
          f'{iterations} interleaved frames per variant'
          + (f', {gap_ms:g} ms idle before each' if gap_ms > 0 else ', back to back'), file=out)
    # Context that moves the figures most on a shared CPU: other load, and OpenMP spin-waiting
    # (with 2 threads on 2 cores, OMP_WAIT_POLICY=PASSIVE was ~3x faster when other processes
    # were busy, and 2.3x slower on an otherwise idle machine).
    print(f'load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, '
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}", file=out)
    from jetseg_core.complexity import count_complexity

    counts = count_complexity(model, (h, w))
    print(f'network: {counts.params:,} params, {counts.macs / 1e9:.3f} GMACs at {h}x{w}; '
          + ', '.join(f'{name} = {seg.backend}' for name, seg in segmenters.items()
                      if name in backends), file=out)
    times: dict[tuple[int, str], list[float]] = {}
    stage_ms: dict[tuple[int, str], list[tuple[float, float, float]]] = {}  # pre, network, post
    reference = None
    for t in threads:
        torch.set_num_threads(t)
        for seg in segmenters.values():
            seg.set_num_threads(t)  # an engine's own threads too
        for fn in runners.values():
            for _ in range(warmup):
                fn(frame)
        for i in range(iterations):
            order = variants[i % len(variants):] + variants[:i % len(variants)]  # rotate: no fixed slot
            for name in order:
                if gap_ms > 0:
                    time.sleep(gap_ms / 1000.0)
                if name in segmenters:
                    t0 = time.perf_counter()
                    result = segmenters[name].segment(frame)
                    times.setdefault((t, name), []).append((time.perf_counter() - t0) * 1000.0)
                    stage_ms.setdefault((t, name), []).append(
                        (result.preprocess_ms, result.inference_ms, result.postprocess_ms))
                else:
                    t0 = time.perf_counter()
                    runners[name](frame)
                    times.setdefault((t, name), []).append((time.perf_counter() - t0) * 1000.0)
        if reference is None:
            reference = torch_path.segment(frame).labels
    agree = {name: float((fn(frame) == reference).mean()) for name, fn in runners.items()}

    print(f'{"threads":>7}  {"variant":<20} {"p50 ms":>8} {"p90 ms":>8} {"FPS":>7} {"pre p50":>8} '
          f'{"net p50":>8} {"post p50":>8} {"vs " + variants[0][:6]:>9}  {"=torch":>7}', file=out)
    for t in threads:
        base = float(np.median(times[(t, variants[0])]))
        for name in variants:
            v = times[(t, name)]
            p50 = float(np.median(v))
            if (t, name) in stage_ms:
                stages = ' '.join(f'{m:8.2f}' for m in np.median(np.asarray(stage_ms[(t, name)]), axis=0))
            else:
                stages = ' '.join([f'{"-":>8}'] * 3)
            print(f'{t:>7}  {name:<20} {p50:8.1f} {_percentile(v, 90):8.1f} {1000.0 / p50:7.1f} {stages} '
                  f'{base / p50:8.2f}x  {agree[name]:7.2%}', file=out)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f'peak RSS {rss_mb:.0f} MiB; ratio = {variants[0]} median / variant median (higher is faster); '
          "=torch : pixels equal to the torch backend's labels", file=out)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog='jetseg-benchmark', description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--profile', default='nano', help='nano, agx or workstation (default nano)')
    parser.add_argument('--size', type=parse_size, default=(360, 480),
                        help='network input HEIGHTxWIDTH for untrained weights (default 360x480)')
    parser.add_argument('--frame-size', type=parse_size, default=None,
                        help='camera frame HEIGHTxWIDTH fed in (default: the network size)')
    parser.add_argument('--threads', type=positive_int_list, default=None,
                        help="thread counts, e.g. 1,2 (default: the profile's best, as the node runs it: "
                             '1 for nano on CPU, else one per core)')
    parser.add_argument('--iterations', type=int, default=30, help='timed frames per variant (default 30)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed frames per variant first (default 3)')
    parser.add_argument('--variants', type=_variant_list, default=None,
                        help=f'comma-separated subset of {",".join(VARIANTS)}; the first is the baseline '
                             '(default: all of them, or none with --backend)')
    parser.add_argument('--backend', type=_backend_list, default=[],
                        help=f'comma-separated backends to time side by side ({",".join(BACKENDS)}), '
                             'e.g. torch,onnxruntime,openvino,onnxruntime-int8,openvino-int8 (int8: the '
                             'graph jetseg-export --int8 calibrated for this --checkpoint and --size); '
                             'after --variants, if given')
    parser.add_argument('--checkpoint', default='untrained',
                        help="'untrained' (default), '' for the shipped weights, or a checkpoint file")
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda', 'auto'))
    parser.add_argument('--gap-ms', type=float, default=0.0,
                        help='idle this long before each timed frame, as a node does between camera '
                             'frames (default 0: back to back)')
    parser.add_argument('--tune-malloc', action='store_true',
                        help='glibc mallopt: keep freed buffers instead of unmapping them every frame')
    try:
        args = parser.parse_args(argv)
        if args.iterations < 1 or args.warmup < 0 or args.gap_ms < 0:
            parser.error('--iterations must be >= 1, --warmup and --gap-ms >= 0')
    except UsageError as exc:
        return usage_error(parser.prog, exc)
    if args.tune_malloc and not tune_malloc():
        print('jetseg-benchmark: note: --tune-malloc ignored (not glibc, or GLIBC_TUNABLES tunes malloc)',
              file=sys.stderr)
    variants = args.variants if args.variants is not None else ([] if args.backend else list(VARIANTS))
    try:
        run_benchmark(args.profile, args.size, args.frame_size, args.threads, args.iterations,
                      args.warmup, variants, args.checkpoint, args.device, args.gap_ms,
                      backends=args.backend)
    except (CheckpointError, ValueError) as exc:  # ValueError: also a backend that cannot run here
        return usage_error(parser.prog, str(exc).splitlines()[0] if str(exc) else exc)
    return 0


if __name__ == '__main__':
    sys.exit(main())
