#!/usr/bin/env python3
"""Soak test of the segmentation node: hours of robot use compressed into one long steady run.

Runs the nano node (config/nano.yaml) fed by a synthetic 640x480 camera at 30 Hz for N minutes
(default 30), with a subscriber on every output (labels, colour mask, overlay, camera_info,
latency, class legend, /diagnostics), and every 10 s records the node's resident memory, open file
descriptors, threads, latency p50/p95 over those 10 s, output rate, drops and the exceptions in its
log. Writes soak.csv, soak.md (targets and the table) and soak.png (RSS and latency over time) and
checks the targets, printing PASS/FAIL for each:

- RSS growth after the first minute < 10 MB;
- latency p95 over the last 5 minutes within 10 % of the first 5 (halves of the run if shorter);
- no exception or error line in the node's log;
- open file descriptors and threads constant after the first minute.

On a shared or virtual machine other tenants take CPU from the whole node for seconds at a time,
which no node can avoid. Each sample therefore also records the CPU the hypervisor gave to other
guests (steal, from /proc/stat) and the CPU used by processes outside the soak; a window with
steal >= 5 % of the machine or >= 0.25 core used by others counts as disturbed. The p95 target is
judged on every window, and printed once more over the undisturbed windows only (information,
not a target), so a failure can be told apart from a drift of the node. A co-tenant can also slow
the shared caches and memory without taking CPU time; the network's inference time, the same
arithmetic on every frame, measures the machine's own speed, and a last information line puts the
p95 change beside it.

Exit status 0 when every target passes. Node start-up and camera code are scripts/benchmark_node.py's.

    python scripts/soak.py --minutes 30 --out soak_results
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_node import start_node_and_camera, tree_usage  # noqa: E402

from jetseg_core.malloc import tune_malloc  # noqa: E402
from jetseg_ros.demo import (  # noqa: E402
    NODE_NAME,
    Child,
    DemoError,
    Recorder,
    config_file,
    frame_size,
    node_command,
    use_transport_env,
)

RSS_GROWTH_LIMIT_MB = 10.0
P95_DRIFT_LIMIT = 0.10
WINDOW_MAX_S = 300.0
SETTLE_S = 60.0  # 'after the first minute'
ERROR_MARKERS = ('Traceback', '[ERROR]', 'Exception', 'processing failed')
STEAL_LIMIT_PCT = 5.0  # a window is disturbed from this share of the machine's CPU time stolen ...
FOREIGN_LIMIT_CORES = 0.25  # ... or from this much CPU used by processes outside the soak


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--minutes', type=float, default=30.0, help='duration of the soak (default 30)')
    parser.add_argument('--rate', type=float, default=30.0, help='camera rate in Hz (default 30)')
    parser.add_argument('--size', default='640x480', help='camera WxH (default 640x480)')
    parser.add_argument('--checkpoint', default='', help="'' = shipped nano weights, 'untrained', or a path")
    parser.add_argument('--sample-every', type=float, default=10.0,
                        help='seconds between samples (default 10)')
    parser.add_argument('--out', type=Path, default=None,
                        help='folder for soak.csv, soak.md, soak.png and the logs (default: a new temp one)')
    args = parser.parse_args(argv)
    try:
        args.width, args.height = frame_size(args.size)
    except ValueError as err:
        parser.error(str(err))
    if args.minutes <= 0 or args.rate <= 0 or args.sample_every <= 0:
        parser.error('--minutes, --rate and --sample-every must be positive')
    return args


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    fds: int
    threads: int
    p50_ms: float
    p95_ms: float
    output_hz: float
    frames_in: int
    frames_processed: int
    frames_dropped: int
    frames_rejected: int
    labels: int
    color_mask: int
    overlay: int
    camera_info: int
    diagnostics: int
    log_errors: int
    steal_pct: float = 0.0  # CPU time the hypervisor gave other guests, % of all cores (/proc/stat)
    foreign_cores: float = 0.0  # cores used by processes outside the soak (other tenants' jobs)
    inference_p50_ms: float = math.nan  # the network's time: the same work every frame, the machine's speed

    @property
    def disturbed(self) -> bool:
        return self.steal_pct >= STEAL_LIMIT_PCT or self.foreign_cores >= FOREIGN_LIMIT_CORES


def host_cpu_seconds() -> tuple[float, float, float]:
    """(busy, stolen, total) CPU seconds of the whole machine since boot, all cores (Linux /proc/stat);
    zeros where there is no /proc/stat."""
    try:
        fields = Path('/proc/stat').read_text().split('\n', 1)[0].split()
    except OSError:
        return 0.0, 0.0, 0.0
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    tick = os.sysconf('SC_CLK_TCK')
    busy = user + nice + system + irq + softirq
    return busy / tick, steal / tick, (busy + idle + iowait + steal) / tick


def tree_handles(pid: int) -> tuple[int, int]:
    """(open file descriptors, threads) of a process and its children."""
    import psutil
    fds = threads = 0
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return -1, -1
    for p in procs:
        try:
            fds += p.num_fds()
            threads += p.num_threads()
        except psutil.NoSuchProcess:
            pass
    return fds, threads


def log_errors(path: Path) -> list[str]:
    text = path.read_text(errors='replace') if path.exists() else ''
    return [line for line in text.splitlines() if any(m in line for m in ERROR_MARKERS)]


class OutputCounter:
    """Subscribes to every output of the node (what a robot's consumers would) and counts messages."""

    def __init__(self, recorder: Recorder) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, QoSReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        self.counts = {'labels': 0, 'color_mask': 0, 'overlay': 0, 'camera_info': 0, 'diagnostics': 0}
        qos = QoSProfile(depth=2, reliability=QoSReliabilityPolicy.RELIABLE)
        for name, msg_type in (('labels', Image), ('color_mask', Image), ('overlay', Image),
                               ('camera_info', CameraInfo)):
            recorder.node.create_subscription(msg_type, f'/{NODE_NAME}/{name}', self._counter(name), qos)
        recorder.node.create_subscription(DiagnosticArray, '/diagnostics', self._counter('diagnostics'), 10)

    def _counter(self, name: str):
        def count(_msg: object) -> None:
            self.counts[name] += 1
        return count


def run(args: argparse.Namespace, out: Path) -> tuple[list[Sample], dict[str, list[float]], list[str]]:
    """Run the soak; returns the samples, every latency report (arrival s, total ms) and the log's errors."""
    params_file = config_file('nano')
    domain = random.Random(os.getpid() ^ time.time_ns()).randint(120, 220)
    use_transport_env(os.environ)
    recorder = Recorder(domain, out, frames=1, save_every=1, with_images=False)
    counter = OutputCounter(recorder)
    children: list[Child] = []
    samples: list[Sample] = []
    try:
        cmd = node_command(params_file, {'profile': 'nano', 'checkpoint': args.checkpoint})
        node = start_node_and_camera(recorder, out, domain, cmd, params_file,
                                     (args.width, args.height, args.rate), children, 'soak', 'nano')
        duration = args.minutes * 60.0
        print(f'soak: {args.minutes:g} min at {args.rate:g} Hz {args.width}x{args.height}, a sample every '
              f'{args.sample_every:g} s (results in {out}) ...', flush=True)
        started = time.monotonic()
        lat = recorder.latency
        seen = len(lat.total)
        prev_counts = dict(counter.counts)
        prev_host, prev_own = host_cpu_seconds(), tree_usage(os.getpid())[1]  # the soak and its children
        next_sample = started + args.sample_every
        while True:
            now = time.monotonic()
            if not all(c.running for c in children):
                raise DemoError('a process exited mid-soak:\n' + '\n'.join(c.tail() for c in children))
            if now < next_sample:
                time.sleep(min(0.5, next_sample - now))
                continue
            rss = tree_usage(node.proc.pid)[0]
            fds, threads = tree_handles(node.proc.pid)
            n = len(lat.total)
            window = lat.total[seen:n]
            inference = lat.inference[seen:n]
            seen = n
            last = lat.last
            counts = dict(counter.counts)
            delta = {k: counts[k] - prev_counts[k] for k in counts}
            prev_counts = counts
            p50, p95 = (np.percentile(window, [50, 95]).tolist() if window else (math.nan, math.nan))
            host, own = host_cpu_seconds(), tree_usage(os.getpid())[1]
            busy, stolen, total = (b - a for a, b in zip(prev_host, host, strict=True))
            foreign = max(0.0, busy - (own - prev_own)) / args.sample_every
            prev_host, prev_own = host, own
            sample = Sample(
                t_s=round(now - started, 1), rss_mb=round(rss, 2), fds=fds, threads=threads,
                p50_ms=round(p50, 2), p95_ms=round(p95, 2),
                output_hz=round(len(window) / args.sample_every, 2),
                frames_in=int(last.frames_in), frames_processed=int(last.frames_processed),
                frames_dropped=int(last.frames_dropped), frames_rejected=int(last.frames_rejected),
                log_errors=len(log_errors(node.log_path)),
                steal_pct=round(100.0 * stolen / total, 1) if total else 0.0,
                foreign_cores=round(foreign, 2),
                inference_p50_ms=round(float(np.median(inference)), 2) if inference else math.nan, **delta)
            samples.append(sample)
            print(f'  {sample.t_s:7.1f} s  RSS {sample.rss_mb:7.1f} MB  fds {fds:3d}  threads {threads:3d}  '
                  f'p50 {sample.p50_ms:6.1f}  p95 {sample.p95_ms:6.1f} ms  {sample.output_hz:5.1f} Hz  '
                  f'dropped {sample.frames_dropped}  log errors {sample.log_errors}  '
                  f'steal {sample.steal_pct:4.1f}%  others {sample.foreign_cores:4.2f} cores', flush=True)
            next_sample += args.sample_every
            if now - started >= duration - 1e-6:
                break
        arrivals = [t - started for t in lat.arrivals[:len(lat.total)]]
        latency = {'t': arrivals, 'total': list(lat.total[:len(arrivals)]),
                   'inference': list(lat.inference[:len(arrivals)])}
        return samples, latency, log_errors(node.log_path)
    finally:
        for child in reversed(children):
            child.stop()
        recorder.close()


@dataclass
class Verdict:
    target: str
    value: str
    passed: bool


def percentile_drift(latency: dict[str, list[float]], duration_s: float, keep: np.ndarray | None = None,
                     figure: str = 'total', q: float = 95) -> tuple[float, float, float, float]:
    """(window s, the q-th percentile of ``figure`` over the first window, over the last, relative
    change) over the frames ``keep`` selects (all by default); end-to-end p95 unless told."""
    window = min(WINDOW_MAX_S, duration_s / 2)
    t = np.asarray(latency['t'])
    values = np.asarray(latency[figure])
    keep = np.ones(t.shape, bool) if keep is None else keep
    first = values[keep & (t >= 0) & (t < window)]
    last = values[keep & (t >= t.max() - window)] if t.size else values
    p_first = float(np.percentile(first, q)) if first.size else math.nan
    p_last = float(np.percentile(last, q)) if last.size else math.nan
    drift = (p_last - p_first) / p_first if p_first > 0 else math.nan
    return window, p_first, p_last, drift


def check_targets(samples: list[Sample], latency: dict[str, list[float]], errors: list[str],
                  duration_s: float) -> list[Verdict]:
    """The four soak targets against the recorded figures."""
    settled = [s for s in samples if s.t_s >= SETTLE_S - 1e-6] or samples[-1:]
    growth = samples[-1].rss_mb - settled[0].rss_mb
    window, p95_first, p95_last, drift = percentile_drift(latency, duration_s)
    fds = {s.fds for s in settled}
    threads = {s.threads for s in settled}
    w = f'{window / 60:g} min'
    return [
        Verdict(f'RSS growth after the first minute < {RSS_GROWTH_LIMIT_MB:g} MB',
                f'{growth:+.1f} MB ({settled[0].rss_mb:.1f} -> {samples[-1].rss_mb:.1f})',
                growth < RSS_GROWTH_LIMIT_MB),
        Verdict(f'p95 of the last {w} within {P95_DRIFT_LIMIT:.0%} of the first {w}',
                f'{p95_first:.1f} -> {p95_last:.1f} ms ({drift:+.1%})',
                math.isfinite(drift) and abs(drift) <= P95_DRIFT_LIMIT),
        Verdict('no exception or error in the node log', f'{len(errors)} lines', not errors),
        Verdict('file descriptors constant after the first minute',
                f'{min(fds)}..{max(fds)}', len(fds) == 1),
        Verdict('threads constant after the first minute',
                f'{min(threads)}..{max(threads)}', len(threads) == 1),
    ]


def disturbed_windows(samples: list[Sample]) -> list[tuple[float, float]]:
    """(start s, end s) of each sampling window that other tenants disturbed."""
    starts = [0.0] + [s.t_s for s in samples[:-1]]
    return [(start, s.t_s) for start, s in zip(starts, samples, strict=True) if s.disturbed]


def undisturbed_p95(samples: list[Sample], latency: dict[str, list[float]], duration_s: float) -> str:
    """The p95 comparison again, over the frames of windows no other tenant disturbed (information)."""
    t = np.asarray(latency['t'])
    keep = np.ones(t.shape, bool)
    disturbed = disturbed_windows(samples)
    for start, end in disturbed:
        keep &= ~((t >= start) & (t < end))
    _, p95_first, p95_last, drift = percentile_drift(latency, duration_s, keep)
    return (f'{len(disturbed)} of {len(samples)} windows disturbed by other tenants (steal >= '
            f'{STEAL_LIMIT_PCT:g}% or others >= {FOREIGN_LIMIT_CORES:g} core); p95 over the undisturbed '
            f'ones: {p95_first:.1f} -> {p95_last:.1f} ms ({drift:+.1%})')


def machine_speed(latency: dict[str, list[float]], duration_s: float) -> str:
    """The network's inference p50, first window against last (the machine's own speed: the network
    does the same arithmetic on every frame), and the end-to-end p95 change once that is divided out
    (information)."""
    if not latency.get('inference'):
        return 'no inference times recorded'
    _, first, last, slowdown = percentile_drift(latency, duration_s, figure='inference', q=50)
    _, _, _, drift = percentile_drift(latency, duration_s)
    beyond = (1 + drift) / (1 + slowdown) - 1
    return (f'network inference p50 (the same work every frame: the machine speed) {first:.1f} -> '
            f'{last:.1f} ms ({slowdown:+.1%}); end-to-end p95 change beyond the machine speed: {beyond:+.1%}')


def information(samples: list[Sample], latency: dict[str, list[float]], duration_s: float) -> list[str]:
    """The lines that tell a disturbed or slower machine from a drifting node (not targets)."""
    return [undisturbed_p95(samples, latency, duration_s), machine_speed(latency, duration_s)]


def write_results(out: Path, args: argparse.Namespace, samples: list[Sample], verdicts: list[Verdict],
                  errors: list[str], info: list[str]) -> None:
    fields = list(asdict(samples[0]))
    with (out / 'soak.csv').open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(asdict(s) for s in samples)
    lines = [f'# Node soak: nano, {args.width}x{args.height} at {args.rate:g} Hz, {args.minutes:g} min', '',
             '| target | measured | result |', '|---|---|---|']
    lines += [f'| {v.target} | {v.value} | {"PASS" if v.passed else "FAIL"} |' for v in verdicts]
    last = samples[-1]
    for line in info:
        lines += ['', line + '.']
    lines += ['', f'Frames in {last.frames_in}, processed {last.frames_processed}, '
              f'dropped {last.frames_dropped}, rejected {last.frames_rejected}.', '',
              '| t (s) | RSS (MB) | fds | threads | p50 (ms) | p95 (ms) | inference p50 (ms) | output (Hz) '
              '| dropped | log errors | steal (%) | others (cores) |',
              '|---|---|---|---|---|---|---|---|---|---|---|---|']
    lines += [f'| {s.t_s:.0f} | {s.rss_mb:.1f} | {s.fds} | {s.threads} | {s.p50_ms:.1f} | {s.p95_ms:.1f} | '
              f'{s.inference_p50_ms:.1f} | {s.output_hz:.1f} | {s.frames_dropped} | {s.log_errors} | '
              f'{s.steal_pct:.1f} | {s.foreign_cores:.2f} |' for s in samples]
    if errors:
        lines += ['', 'Node log errors:', ''] + [f'    {e}' for e in errors[:20]]
    (out / 'soak.md').write_text('\n'.join(lines) + '\n')
    plot(out / 'soak.png', samples, args)


def plot(path: Path, samples: list[Sample], args: argparse.Namespace) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    minutes = [s.t_s / 60 for s in samples]
    fig, (ax_rss, ax_p95) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    ax_rss.plot(minutes, [s.rss_mb for s in samples], color='tab:blue')
    ax_rss.set_ylabel('node RSS (MB)')
    ax_rss.grid(alpha=0.3)
    ax_p95.plot(minutes, [s.p95_ms for s in samples], color='tab:red', label='end-to-end p95')
    ax_p95.plot(minutes, [s.p50_ms for s in samples], color='tab:gray', label='end-to-end p50')
    ax_p95.plot(minutes, [s.inference_p50_ms for s in samples], color='tab:green', ls=':',
                label='inference p50 (machine speed)')
    for start, end in disturbed_windows(samples):
        ax_p95.axvspan(start / 60, end / 60, color='tab:orange', alpha=0.25, lw=0)
    ax_p95.set_ylabel('latency (ms)')
    ax_p95.set_xlabel('minutes')
    ax_p95.set_ylim(bottom=0)
    ax_p95.legend(loc='center', ncol=3, fontsize=8)  # the empty band between inference and end to end
    ax_p95.grid(alpha=0.3)
    fig.suptitle(f'nano node soak, {args.width}x{args.height} at {args.rate:g} Hz, sampled every '
                 f'{args.sample_every:g} s\n(orange: CPU taken by other tenants)', fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_malloc()
    out = args.out or Path(tempfile.mkdtemp(prefix='jetseg_soak_'))
    out.mkdir(parents=True, exist_ok=True)
    try:
        samples, latency, errors = run(args, out)
    except DemoError as err:
        print(f'soak: error: {err}', file=sys.stderr)
        return 1
    if not samples:
        print('soak: error: no sample was taken', file=sys.stderr)
        return 1
    verdicts = check_targets(samples, latency, errors, args.minutes * 60.0)
    info = information(samples, latency, args.minutes * 60.0)
    write_results(out, args, samples, verdicts, errors, info)
    print()
    for v in verdicts:
        print(f"{'PASS' if v.passed else 'FAIL'}  {v.target}: {v.value}")
    for line in info:
        print(f'info  {line}')
    print(f'results: {out}/soak.csv, soak.md, soak.png')
    return 0 if all(v.passed for v in verdicts) else 1


if __name__ == '__main__':
    sys.exit(main())
