#!/usr/bin/env python3
"""Soak benchmark of the segmentation node as users run it: separate processes, real DDS transport.

Publishes synthetic 640x480 frames at 30 Hz into the node (nano profile, config/nano.yaml as the
launch files load it, or with --no-params-file none, as `ros2 run` starts it) for a while and
reports end-to-end latency, inference time, node overhead (end-to-end minus inference; target
<= 3 ms or <= 10 %), output rate, drops, and the node's resident memory sampled every few
seconds (start / end / max / growth). The overhead is split into transport (DDS delivery of the
image into the node), waiting (for the worker to finish the previous frame: up to one frame
interval when inference is slower than the camera), preprocess and postprocess. Not a test: it
takes minutes and its figures depend on the machine.

    python scripts/benchmark_node.py --seconds 60 --checkpoint untrained
    python scripts/benchmark_node.py --seconds 60 --checkpoint untrained --no-params-file
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from jetseg_core.malloc import tune_malloc
from jetseg_ros.demo import (
    Child,
    DemoError,
    Recorder,
    config_file,
    cpu_threads,
    frame_size,
    node_command,
    percentiles,
    ros_env,
    source_command,
    use_transport_env,
    yaml_parameters,
)

OVERHEAD_TARGET_MS = 3.0
OVERHEAD_TARGET_FRACTION = 0.10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seconds', type=float, default=300.0, help='measured duration (default 300)')
    parser.add_argument('--rate', type=float, default=30.0, help='input rate in Hz (default 30)')
    parser.add_argument('--size', default='640x480', help='input WxH (default 640x480)')
    parser.add_argument('--profile', default='nano', choices=('nano', 'agx', 'workstation'))
    parser.add_argument('--checkpoint', default='', help="'' = shipped weights, 'untrained', or a path")
    parser.add_argument('--qos', default='reliable', choices=('reliable', 'best_effort'),
                        help="the node's image subscription reliability (default reliable)")
    parser.add_argument('--threads', type=int, default=0,
                        help="the node's num_threads (default 0: the YAML's, else the profile's best)")
    parser.add_argument('--backend', default='',
                        help="the node's backend (auto, torch, openvino, onnxruntime, tensorrt; default: "
                             "the YAML's, else auto)")
    parser.add_argument('--no-params-file', action='store_true',
                        help='start the node without config/<profile>.yaml, as `ros2 run` or a launch '
                             'file of your own does: only profile, checkpoint, qos (and --threads) are set')
    parser.add_argument('--sample-every', type=float, default=5.0,
                        help='RSS sampling period in s (default 5)')
    parser.add_argument('--warmup', type=float, default=5.0, help='seconds ignored at the start (default 5)')
    parser.add_argument('--json', type=Path, default=None, help='also write the figures to this file')
    args = parser.parse_args(argv)
    try:
        args.width, args.height = frame_size(args.size)
    except ValueError as err:
        parser.error(str(err))
    if args.seconds <= 0 or args.rate <= 0 or args.sample_every <= 0:
        parser.error('--seconds, --rate and --sample-every must be positive')
    return args


def tree_usage(pid: int) -> tuple[float, float]:
    """(resident MiB, CPU seconds so far) of a process and its children (the ROS wheels may re-exec
    Python once)."""
    import psutil
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return math.nan, math.nan
    rss = cpu = 0.0
    for p in procs:
        try:
            rss += p.memory_info().rss
            times = p.cpu_times()
            cpu += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return rss / 2**20, cpu


def start_node_and_camera(recorder: Recorder, work: Path, domain: int, node_cmd: list[str], params_file: Path,
                          camera: tuple[int, int, float], children: list[Child], who: str,
                          profile: str) -> Child:
    """Start the node, wait for its class legend, start a synthetic ``camera`` (width, height, Hz)
    and wait for the first output. Each child goes into ``children`` as it starts, so the caller
    stops them whatever happens; returns the node. Shared with scripts/soak.py."""
    node = Child.start('segmentation_node', node_cmd, ros_env(domain), work)
    children.append(node)
    print(f'{who}: loading the {profile} node (logs in {work}) ...', flush=True)
    deadline = time.monotonic() + 180
    while recorder.class_info is None:
        if not node.running or time.monotonic() > deadline:
            raise DemoError(f'the node did not start:\n{node.tail()}')
        time.sleep(0.2)
    width, height, rate = camera
    children.append(Child.start('image_source', source_command(params_file, {
        'source': 'synthetic', 'width': width, 'height': height, 'rate': rate,
        'wait_for_subscribers': 1}), ros_env(domain), work))
    while recorder.latency.last is None:
        if not all(c.running for c in children) or time.monotonic() > deadline:
            raise DemoError('no output from the node:\n' + '\n'.join(c.tail() for c in children))
        time.sleep(0.2)
    return node


def measure(args: argparse.Namespace) -> dict:
    params_file = config_file(args.profile)
    yaml_threads = 0 if args.no_params_file else int(yaml_parameters(params_file).get('num_threads', 0))
    threads = args.threads or cpu_threads(yaml_threads)  # 0: the node picks the profile's best
    domain = random.Random(os.getpid() ^ time.time_ns()).randint(120, 220)
    use_transport_env(os.environ)
    work = Path(tempfile.mkdtemp(prefix='jetseg_bench_'))
    recorder = Recorder(domain, work, frames=1, save_every=1, with_images=False)
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import Image
    labels_seen = [0]
    recorder.node.create_subscription(  # a consumer of the labels, as in a real system
        Image, '/jetseg/labels', lambda _m: labels_seen.__setitem__(0, labels_seen[0] + 1),
        QoSProfile(depth=2, reliability=QoSReliabilityPolicy.RELIABLE))
    children: list[Child] = []
    rss: list[tuple[float, float]] = []
    try:
        overrides = {'profile': args.profile, 'checkpoint': args.checkpoint, 'qos_reliability': args.qos}
        if threads:
            overrides['num_threads'] = threads
        if args.backend:
            overrides['backend'] = args.backend
        cmd = node_command(params_file, overrides)
        if args.no_params_file:
            at = cmd.index('--params-file')
            del cmd[at:at + 2]
        node = start_node_and_camera(recorder, work, domain, cmd, params_file,
                                     (args.width, args.height, args.rate), children, 'benchmark',
                                     args.profile)
        # What the node runs with, from its start-up line: 'threads 1 (nano default), precision fp32 (auto)'.
        ready = re.search(r'threads (\d+) \(([^)]*)\), precision (\S+) \(([^)]*)\)',
                          node.log_path.read_text(errors='replace'))
        if ready:
            in_effect = {'threads': int(ready[1]), 'threads_source': ready[2], 'precision': ready[3]}
        else:
            in_effect = {'threads': threads, 'threads_source': 'num_threads' if threads else 'unknown',
                         'precision': 'unknown'}
        backend = re.search(r'backend (\S+), threads', node.log_path.read_text(errors='replace'))
        in_effect['backend'] = backend[1] if backend else 'unknown'
        print(f'benchmark: running {args.seconds:g} s at {args.rate:g} Hz ({args.warmup:g} s warm-up) ...',
              flush=True)
        time.sleep(args.warmup)
        skip = len(recorder.latency.total)
        first_in = recorder.latency.last.frames_in
        first_dropped = recorder.latency.last.frames_dropped
        started = time.monotonic()
        cpu_start = tree_usage(node.proc.pid)[1]
        next_sample = started
        while (now := time.monotonic()) < started + args.seconds:
            if not all(c.running for c in children):
                raise DemoError('a process exited mid-run:\n' + '\n'.join(c.tail() for c in children))
            if now >= next_sample:
                rss.append((now - started, tree_usage(node.proc.pid)[0]))
                next_sample += args.sample_every
            time.sleep(min(0.5, max(0.01, next_sample - now)))
        rss_end, cpu_end = tree_usage(node.proc.pid)
        elapsed = time.monotonic() - started
        rss.append((elapsed, rss_end))
        lat = recorder.latency
        n = len(lat.total)
        arrivals = lat.arrivals[skip:n]
        rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else math.nan
        last = lat.last
        frames_in = int(last.frames_in - first_in)
        return {
            'profile': recorder.class_info.profile, 'checkpoint': recorder.class_info.checkpoint,
            'input': f'{args.width}x{args.height} @ {args.rate:g} Hz', 'seconds': args.seconds,
            **in_effect, 'qos': args.qos,
            'params_file': 'none' if args.no_params_file else str(params_file),
            'end_to_end_ms': percentiles(lat.total[skip:n]),
            'inference_ms': percentiles(lat.inference[skip:n]),
            'node_overhead_ms': percentiles(lat.overhead[skip:n]),
            'preprocess_ms': percentiles(lat.preprocess[skip:n]),
            'postprocess_ms': percentiles(lat.postprocess[skip:n]),
            'transport_ms': percentiles(lat.transport[skip:n]),
            'waiting_ms': percentiles(lat.waiting[skip:n]),
            'output_rate_hz': rate, 'frames_in': frames_in,
            'node_cpu_cores': (cpu_end - cpu_start) / elapsed,
            'input_frames_expected': round(args.seconds * args.rate),
            'frames_dropped': int(last.frames_dropped - first_dropped),
            'frames_processed': len(arrivals),
            'rss_mb': {'start': rss[0][1], 'end': rss[-1][1], 'max': max(r for _, r in rss),
                       'growth': rss[-1][1] - rss[0][1],
                       'growth_mb_per_min': (rss[-1][1] - rss[0][1]) / max(rss[-1][0] / 60, 1e-9),
                       'samples': [(round(t, 1), round(r, 1)) for t, r in rss]},
        }
    finally:
        for child in reversed(children):
            child.stop()
        recorder.close()


def print_table(r: dict) -> None:
    threads = f"{r['threads']} thread{'s' if r['threads'] != 1 else ''} ({r['threads_source']})"
    params = 'no parameters file' if r['params_file'] == 'none' else Path(r['params_file']).name
    print(f"\njetseg node benchmark: {r['profile']} profile ({r['checkpoint']}), {params}, {r['input']}, "
          f"{r['seconds']:g} s, backend {r.get('backend', 'unknown')}, {threads}, {r['precision']}, "
          f"{r['qos']} image QoS")
    print(f"{'':22s}{'p50':>9s}{'p95':>9s}{'mean':>9s}{'max':>9s}")
    for key, label in (('end_to_end_ms', 'end-to-end (ms)'), ('inference_ms', 'inference (ms)'),
                       ('node_overhead_ms', 'node overhead (ms)'), ('preprocess_ms', '  preprocess (ms)'),
                       ('postprocess_ms', '  postprocess (ms)'), ('transport_ms', '  transport (ms)'),
                       ('waiting_ms', '  waiting (ms)')):
        s = r[key]
        print(f"{label:22s}{s['p50']:9.2f}{s['p95']:9.2f}{s['mean']:9.2f}{s['max']:9.2f}")
    print(f"output rate           {r['output_rate_hz']:.2f} Hz")
    print(f"node CPU use          {r['node_cpu_cores']:.2f} cores (of {os.cpu_count()})")
    print(f"frames                in {r['frames_in']} of ~{r['input_frames_expected']} published, processed "
          f"{r['frames_processed']}, dropped (newest-frame policy) {r['frames_dropped']}")
    e2e, over = r['end_to_end_ms']['p50'], r['node_overhead_ms']['p50']
    ok = over <= OVERHEAD_TARGET_MS or over <= OVERHEAD_TARGET_FRACTION * e2e
    print(f"overhead target       p50 {over:.2f} ms = {100 * over / e2e:.1f} % of end-to-end -> "
          f"{'met' if ok else 'NOT met'} (<= {OVERHEAD_TARGET_MS:g} ms or <= {OVERHEAD_TARGET_FRACTION:.0%})")
    m = r['rss_mb']
    print(f"node RSS (MiB)        start {m['start']:.1f}, end {m['end']:.1f}, max {m['max']:.1f}, growth "
          f"{m['growth']:+.1f} ({m['growth_mb_per_min']:+.2f}/min, {len(m['samples'])} samples)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_malloc()  # the recorder receives every label map; page faults here would slow the node down too
    try:
        result = measure(args)
    except DemoError as err:
        print(f'benchmark: error: {err}', file=sys.stderr)
        return 1
    print_table(result)
    if args.json:
        clean = json.loads(json.dumps(result, default=float).replace('NaN', 'null'))
        args.json.write_text(json.dumps(clean, indent=2))
    return 0 if np.isfinite(result['end_to_end_ms']['p50']) else 1


if __name__ == '__main__':
    sys.exit(main())
