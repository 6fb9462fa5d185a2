"""jetseg-demo: the whole pipeline in one command, with pictures and latency figures to look at.

Starts image_source (synthetic 640x480 driving scenes) and the segmentation node (nano profile,
config/nano.yaml, the shipped weights trained on such scenes) as separate processes on an
isolated ROS domain, records their outputs in this process and writes to ``demo_output/``:

- ``frames/overlay_NNNN.png``: every Nth overlay as published by the node;
- ``contact_sheet.png``: input | colour mask | overlay for a few frames, with the class legend;
- ``preview.gif``: the overlay stream, animated;
- ``summary.json``: latency percentiles (end-to-end, inference, node overhead), output rate, drops.

Needs only rclpy (no launch_ros): ``jetseg-demo`` or ``python -m jetseg_ros.demo --frames 150``.
With launch_ros installed, ``--use-launch`` runs ``ros2 launch jetseg_ros nano.launch.py`` instead.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from jetseg_core.malloc import tune_malloc
from jetseg_core.visualize import contact_sheet

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the folder holding jetseg_ros/
NODE_NAME = 'jetseg'
SHEET_ROWS = 4
GIF_WIDTH = 320
GIF_MAX_FRAMES = 60


class DemoError(Exception):
    """The pipeline did not run; the message says what to look at."""


# ----------------------------------------------------------------------------- files and processes

def config_file(name: str) -> Path:
    """config/<name> (a profile name means its YAML) from the source checkout, else from the installed
    share/jetseg_ros."""
    name = name if '.' in name else f'{name}.yaml'
    candidates = [PACKAGE_ROOT / 'config', Path(sys.prefix) / 'share' / 'jetseg_ros' / 'config']
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory('jetseg_ros')) / 'config')
    except (ImportError, LookupError, ValueError):
        pass
    for folder in candidates:
        if (folder / name).is_file():
            return folder / name
    raise DemoError(f'config/{name} not found (looked in {", ".join(map(str, candidates))})')


def transport_env() -> dict[str, str]:
    """DDS settings every process of the demo shares: the shipped Fast DDS profile
    (config/fastdds_shm.xml: whole frames through shared memory, ~4x lower transport latency than
    LARGE_DATA and no best-effort loss), discovery on this machine only."""
    return {'FASTDDS_DEFAULT_PROFILES_FILE': str(config_file('fastdds_shm.xml')),
            'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}


def use_transport_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` (changed in place) with :func:`transport_env`; a builtin-transports choice would win."""
    env.pop('FASTDDS_BUILTIN_TRANSPORTS', None)
    env.update(transport_env())
    return env


def yaml_parameters(path: Path) -> dict[str, Any]:
    """The `/**: ros__parameters:` block of a parameter file."""
    import yaml
    data = yaml.safe_load(path.read_text()) or {}
    return dict((data.get('/**') or {}).get('ros__parameters') or {})


def child_pythonpath() -> str:
    """PYTHONPATH that makes child processes (also those ``ros2 launch`` starts) import this
    jetseg_ros, a checkout or an installed copy, first; then any PYTHONPATH already set."""
    return os.pathsep.join([str(PACKAGE_ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p])


def ros_env(domain_id: int, **extra: str) -> dict[str, str]:
    """Environment for a child on its own domain, with transports that carry camera-sized images."""
    env = use_transport_env(dict(os.environ))
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env['PYTHONUNBUFFERED'] = '1'
    env['RCUTILS_COLORIZED_OUTPUT'] = '0'
    # The children import the same jetseg_ros as this process, installed or from a checkout, and
    # never one that `python -m` would otherwise find first in the current directory.
    env['PYTHONPATH'] = child_pythonpath()
    env['PYTHONSAFEPATH'] = '1'
    env.pop('ROS_LOCALHOST_ONLY', None)
    env.update(extra)
    return env


@dataclass
class Child:
    """A child process in its own session, its output going to a log file."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    log: TextIO

    @classmethod
    def start(cls, name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> Child:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f'{name}.log'
        log = log_path.open('w')
        log.write('$ ' + ' '.join(cmd) + '\n')
        log.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        return cls(name, proc, log_path, log)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors='replace').splitlines()
        return '\n'.join(f'  | {line}' for line in text[-lines:])

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT (what ROS nodes and launch shut down cleanly on), SIGKILL only if it hangs."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # The whole group (its own session): a SIGKILLed ros2 launch would leave its nodes running.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        self.log.close()
        return int(self.proc.returncode)


def ros_args(params: dict[str, Any]) -> list[str]:
    """`-p name:=value` pairs with ROS literal syntax."""
    out: list[str] = []
    for key, value in params.items():
        if isinstance(value, bool):
            text = 'true' if value else 'false'
        else:
            text = "''" if value == '' else str(value)
        out += ['-p', f'{key}:={text}']
    return out


def node_command(params_file: Path, overrides: dict[str, Any]) -> list[str]:
    return [sys.executable, '-m', 'jetseg_ros.segmentation_node', '--ros-args', '-r', f'__node:={NODE_NAME}',
            '--params-file', str(params_file), *ros_args(overrides),
            '-r', 'image:=/camera/image_raw', '-r', 'camera_info:=/camera/camera_info']


def source_command(params_file: Path, overrides: dict[str, Any]) -> list[str]:
    return [sys.executable, '-m', 'jetseg_ros.image_source', '--ros-args', '--params-file', str(params_file),
            *ros_args(overrides)]


def ros2_command() -> str | None:
    """The ros2 command of this Python's environment (a venv set up with shared/ros-launch), else
    the one on PATH (a ROS 2 installation); None if there is none."""
    beside = Path(sys.executable).with_name('ros2')
    return str(beside) if beside.exists() else shutil.which('ros2')


def cpu_threads(yaml_value: int) -> int:
    """A YAML's thread count capped at this machine's cores (oversubscription slows torch); 0 stays 0,
    which the node resolves to the profile's best (jetseg_core.profiles.RUNTIME_SETTINGS)."""
    cores = os.cpu_count() or 1
    return min(yaml_value, cores) if yaml_value > 0 else 0


# ----------------------------------------------------------------------------- statistics

def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p95 / mean / max of a list (NaN when empty, so JSON stays numeric)."""
    if not values:
        return {'p50': math.nan, 'p95': math.nan, 'mean': math.nan, 'max': math.nan, 'n': 0}
    arr = np.asarray(values, dtype=np.float64)
    return {'p50': float(np.percentile(arr, 50)), 'p95': float(np.percentile(arr, 95)),
            'mean': float(arr.mean()), 'max': float(arr.max()), 'n': int(arr.size)}


@dataclass
class LatencyLog:
    """Per-frame figures from the node's ~/latency, plus arrival times for the output rate."""

    total: list[float] = field(default_factory=list)
    inference: list[float] = field(default_factory=list)
    overhead: list[float] = field(default_factory=list)
    preprocess: list[float] = field(default_factory=list)
    postprocess: list[float] = field(default_factory=list)
    transport: list[float] = field(default_factory=list)  # image stamp -> the node received it
    waiting: list[float] = field(default_factory=list)  # received -> the worker took it (newest-frame slot)
    arrivals: list[float] = field(default_factory=list)
    last: Any = None

    def add(self, msg: Any) -> None:
        self.total.append(float(msg.total_ms))
        self.inference.append(float(msg.inference_ms))
        self.overhead.append(float(msg.total_ms - msg.inference_ms))
        self.preprocess.append(float(msg.preprocess_ms))
        self.postprocess.append(float(msg.postprocess_ms))
        self.transport.append(float(msg.age_at_receipt_ms))
        self.waiting.append(float(msg.total_ms - msg.age_at_receipt_ms - msg.preprocess_ms
                                  - msg.inference_ms - msg.postprocess_ms))
        self.arrivals.append(time.monotonic())
        self.last = msg

    def output_rate(self) -> float:
        """Messages per second between the first and the last (NaN with fewer than 2)."""
        if len(self.arrivals) < 2 or self.arrivals[-1] <= self.arrivals[0]:
            return math.nan
        return (len(self.arrivals) - 1) / (self.arrivals[-1] - self.arrivals[0])

    def summary(self, skip: int = 0) -> dict[str, Any]:
        """Percentiles, ignoring the first ``skip`` frames (warm-up)."""
        def cut(values: list[float]) -> list[float]:
            return values[skip:] if len(values) > skip + 5 else values

        last = self.last
        return {
            'total_ms': percentiles(cut(self.total)),
            'inference_ms': percentiles(cut(self.inference)),
            'node_overhead_ms': percentiles(cut(self.overhead)),
            'preprocess_ms': percentiles(cut(self.preprocess)),
            'postprocess_ms': percentiles(cut(self.postprocess)),
            'output_rate_hz': self.output_rate(),
            'frames_in': int(last.frames_in) if last else 0,
            'frames_processed': int(last.frames_processed) if last else 0,
            'frames_dropped': int(last.frames_dropped) if last else 0,
            'frames_rejected': int(last.frames_rejected) if last else 0,
        }


# ----------------------------------------------------------------------------- recording

def _stamp_key(header: Any) -> tuple[int, int]:
    return int(header.stamp.sec), int(header.stamp.nanosec)


class Recorder:
    """An rclpy node in this process that keeps what the demo writes out; spun by a thread."""

    def __init__(self, domain_id: int, out_dir: Path, frames: int, save_every: int, with_images: bool = True,
                 namespace: str = '') -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy

        from jetseg_ros.msg import ClassInfo, SegmentationLatency

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node('jetseg_demo_recorder', context=self.context)
        self.lock = threading.Lock()
        self.out_dir = out_dir
        self.save_every = max(1, save_every)
        self.latency = LatencyLog()
        self.class_info: Any = None
        self.inputs: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self.masks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self.overlays_seen = 0
        self.inputs_seen = 0
        self.saved_frames: list[Path] = []
        self.sheet_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.sheet_stride = max(1, frames // (3 * SHEET_ROWS))
        self.gif_frames: list[np.ndarray] = []
        self.gif_stride = max(1, math.ceil(frames / GIF_MAX_FRAMES))
        self.viewer_latency: list[float] = []  # image stamp -> overlay arrival here
        prefix = f'/{namespace.strip("/")}' if namespace.strip('/') else ''
        # Reliable image subscriptions: best-effort 640x480 frames get lost on a loaded machine.
        images = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
        reliable = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                             durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
        sub = self.node.create_subscription
        sub(SegmentationLatency, f'{prefix}/{NODE_NAME}/latency', self._on_latency, reliable)
        sub(ClassInfo, f'{prefix}/{NODE_NAME}/class_info', self._on_class_info, latched)
        # The image subscriptions start once the node is ready (its class_info arrives): an image
        # source that waits for its first subscriber (the launch files' wait_for_subscribers: 1)
        # would otherwise start for this recorder and send its frames before the node listens.
        self._image_topics = [(f'{prefix}/camera/image_raw', self._on_input),
                              (f'{prefix}/{NODE_NAME}/color_mask', self._on_mask),
                              (f'{prefix}/{NODE_NAME}/overlay', self._on_overlay)] if with_images else []
        self._image_qos = images
        (out_dir / 'frames').mkdir(parents=True, exist_ok=True)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # the context shutting down ends the spin
            self.executor.spin()

    @staticmethod
    def _rgb(msg: Any) -> np.ndarray:
        from jetseg_ros.image_conversion import image_to_rgb
        return image_to_rgb(msg)

    def _on_latency(self, msg: Any) -> None:
        with self.lock:
            self.latency.add(msg)

    def _on_class_info(self, msg: Any) -> None:
        with self.lock:
            first = self.class_info is None
            self.class_info = msg
        if first:
            from sensor_msgs.msg import Image
            for topic, callback in self._image_topics:
                self.node.create_subscription(Image, topic, callback, self._image_qos)

    def _on_input(self, msg: Any) -> None:
        rgb = self._rgb(msg)
        with self.lock:
            self.inputs_seen += 1
            self.inputs[_stamp_key(msg.header)] = rgb
            while len(self.inputs) > 30:
                self.inputs.popitem(last=False)

    def _on_mask(self, msg: Any) -> None:
        rgb = self._rgb(msg)
        with self.lock:
            self.masks[_stamp_key(msg.header)] = rgb
            while len(self.masks) > 30:
                self.masks.popitem(last=False)

    def _on_overlay(self, msg: Any) -> None:
        from PIL import Image as PILImage
        now = self.node.get_clock().now().nanoseconds
        stamp_ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        overlay = self._rgb(msg)
        key = _stamp_key(msg.header)
        with self.lock:
            index = self.overlays_seen
            self.overlays_seen += 1
            self.viewer_latency.append((now - stamp_ns) / 1e6)
            rgb, mask = self.inputs.get(key), self.masks.get(key)
        if index % self.save_every == 0:
            path = self.out_dir / 'frames' / f'overlay_{index:04d}.png'
            PILImage.fromarray(overlay).save(path)
            self.saved_frames.append(path)
        if index % self.gif_stride == 0 and len(self.gif_frames) < GIF_MAX_FRAMES:
            h, w = overlay.shape[:2]
            small = PILImage.fromarray(overlay).resize((GIF_WIDTH, max(1, round(h * GIF_WIDTH / w))),
                                                       PILImage.BILINEAR)
            self.gif_frames.append(np.asarray(small))
        if rgb is not None and mask is not None and index % self.sheet_stride == 0:
            self.sheet_rows.append((rgb, mask, overlay))

    def close(self) -> None:
        import rclpy
        with contextlib.suppress(Exception):
            self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(5)


# ----------------------------------------------------------------------------- pictures

def pick_evenly(items: list, count: int) -> list:
    if len(items) <= count:
        return list(items)
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def write_gif(frames: list[np.ndarray], path: Path, fps: float) -> None:
    from PIL import Image as PILImage
    images = [PILImage.fromarray(f).quantize(colors=128, method=PILImage.Quantize.MEDIANCUT) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(20, round(1000 / fps)), loop=0)


# ----------------------------------------------------------------------------- the run

def frame_size(text: str, minimum: int = 1) -> tuple[int, int]:
    """'640x480' -> (640, 480): camera frames are given width first, as ROS images are."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        width = height = 0
    if width < minimum or height < minimum:
        raise ValueError(f"--size '{text}': expected WxH with both sides >= {minimum}, e.g. 640x480")
    return width, height


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='jetseg-demo', description=__doc__.split('\n\n')[0])
    parser.add_argument('--frames', type=int, default=150,
                        help='frames the image source publishes (default 150)')
    parser.add_argument('--rate', type=float, default=15.0, help='input rate in Hz (default 15)')
    parser.add_argument('--size', default='640x480', help='input WxH (default 640x480)')
    parser.add_argument('--checkpoint', default='synthetic',
                        help="weights: 'synthetic' = the shipped weights trained on scenes like the demo's "
                             "(default), 'camvid', 'untrained', or a .safetensors path")
    parser.add_argument('--profile', default='nano', choices=('nano', 'agx', 'workstation'),
                        help='profile and config/<profile>.yaml (default nano)')
    parser.add_argument('--output', type=Path, default=Path('demo_output'),
                        help='output folder (default demo_output)')
    parser.add_argument('--save-every', type=int, default=10,
                        help='save every Nth overlay as PNG (default 10)')
    parser.add_argument('--qos', default='reliable', choices=('reliable', 'best_effort'),
                        help='image subscription reliability of the node (default reliable: the image '
                             'source publishes reliably; with config/fastdds_shm.xml best_effort loses no '
                             'frames either)')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID (default: a random free one)')
    parser.add_argument('--startup-timeout', type=float, default=120.0,
                        help='seconds to wait for the node to load its model (default 120)')
    parser.add_argument('--use-launch', action='store_true',
                        help='start the nodes with `ros2 launch jetseg_ros <profile>.launch.py` '
                             '(needs launch_ros)')
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error('--frames must be at least 1')
    if not args.rate > 0:
        parser.error('--rate must be positive')
    try:
        args.width, args.height = frame_size(args.size, minimum=64)
    except ValueError as err:
        parser.error(str(err))
    if args.domain_id is None:
        args.domain_id = random.Random(os.getpid() ^ time.time_ns()).randint(120, 220)
    if not 0 <= args.domain_id <= 232:
        parser.error('--domain-id must be in 0..232')
    from jetseg_core.checkpoint import NAMED_CHECKPOINTS

    if args.checkpoint not in NAMED_CHECKPOINTS and not Path(args.checkpoint).is_file():
        parser.error(f"--checkpoint '{args.checkpoint}': no such file")
    if args.use_launch and importlib.util.find_spec('launch_ros') is None:
        parser.error('--use-launch needs launch_ros (a ROS 2 install); '
                     'run without it to start the nodes directly')
    default_size = frame_size(parser.get_default('size'), minimum=64)
    if args.use_launch and ((args.width, args.height), args.qos) != (default_size, parser.get_default('qos')):
        parser.error('--size and --qos cannot be used with --use-launch: the launch file starts the '
                     "image source at 640x480 and the node with config/<profile>.yaml's QoS")
    return args


def _wait(predicate, timeout: float, children: list[Child], what: str) -> None:
    """Wait for ``predicate`` while every child is alive; DemoError naming the failing process."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for child in children:
            if not child.running:
                raise DemoError(f'{child.name} exited with code {child.proc.returncode} before {what}; '
                                f'its log ({child.log_path}) ends with:\n{child.tail()}')
        if time.monotonic() > deadline:
            logs = '\n'.join(f'{c.name} ({c.log_path}):\n{c.tail(8)}' for c in children)
            raise DemoError(f'no {what} after {timeout:.0f} s\n{logs}')
        time.sleep(0.1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the nodes, record, stop them; returns the summary (outputs written to args.output)."""
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    for old in (out / 'frames').glob('overlay_*.png'):
        old.unlink()
    params_file = config_file(args.profile)
    yaml_params = yaml_parameters(params_file)
    use_transport_env(os.environ)  # this process's participant must use the children's transports
    env = ros_env(args.domain_id)
    threads = cpu_threads(int(yaml_params.get('num_threads', 0)))
    source_params = {'source': 'synthetic', 'width': args.width, 'height': args.height, 'rate': args.rate,
                     'num_frames': args.frames, 'wait_for_subscribers': 2}

    recorder = Recorder(args.domain_id, out, args.frames, args.save_every)
    children: list[Child] = []
    started = time.monotonic()
    try:
        if args.use_launch:
            cmd = [ros2_command() or 'ros2', 'launch', 'jetseg_ros', f'{args.profile}.launch.py',
                   'source:=synthetic', f'rate:={args.rate}', f'num_frames:={args.frames}']
            if args.checkpoint:  # ros2 launch rejects 'checkpoint:='; unset, it means the shipped weights
                cmd.append(f'checkpoint:={args.checkpoint}')
            children.append(Child.start('ros2_launch', cmd, ros_env(args.domain_id), out / 'logs'))
        else:
            overrides = {'checkpoint': args.checkpoint, 'num_threads': threads, 'qos_reliability': args.qos}
            children.append(Child.start('segmentation_node', node_command(params_file, overrides),
                                        ros_env(args.domain_id), out / 'logs'))
        print(f'jetseg-demo: starting the {args.profile} node (ROS_DOMAIN_ID={args.domain_id}); '
              'loading the model ...', flush=True)
        _wait(lambda: recorder.class_info is not None, args.startup_timeout, children,
              'class legend from the node')
        print(f'jetseg-demo: node ready after {time.monotonic() - started:.1f} s; publishing {args.frames} '
              f'synthetic {args.width}x{args.height} frames at {args.rate:g} Hz', flush=True)
        if not args.use_launch:
            children.append(Child.start('image_source', source_command(params_file, source_params), env,
                                        out / 'logs'))
        expected = args.frames / args.rate
        _wait(lambda: recorder.latency.last is not None, 30.0 + expected, children, 'segmentation output')
        # Done when the source has finished and the node has gone quiet (or stays quiet too long).
        deadline = time.monotonic() + 3 * expected + 60
        while time.monotonic() < deadline:
            idle = time.monotonic() - recorder.latency.arrivals[-1]
            if args.use_launch:
                source_done = recorder.latency.last.frames_in >= args.frames
            else:
                source_done = not children[-1].running
            if (source_done and idle > 2.0) or idle > 10.0:
                break
            if not children[0].running:
                raise DemoError(f'{children[0].name} exited with code {children[0].proc.returncode} '
                                f'mid-run:\n{children[0].tail()}')
            time.sleep(0.2)
    finally:
        codes = {c.name: c.stop() for c in reversed(children)}
        recorder.close()
    return finish(args, recorder, codes, time.monotonic() - started)


def finish(args: argparse.Namespace, rec: Recorder, codes: dict[str, int], elapsed: float) -> dict[str, Any]:
    """Write the pictures and summary.json; return the summary."""
    from PIL import Image as PILImage
    out: Path = args.output
    info = rec.class_info
    names = list(info.class_names)
    colours = [(round(c.r * 255), round(c.g * 255), round(c.b * 255)) for c in info.class_colors]
    outputs: dict[str, Any] = {'overlay_frames': [str(p) for p in rec.saved_frames]}
    if rec.sheet_rows:
        sheet = contact_sheet(pick_evenly(rec.sheet_rows, SHEET_ROWS), names, colours)
        PILImage.fromarray(sheet).save(out / 'contact_sheet.png')
        outputs['contact_sheet'] = str(out / 'contact_sheet.png')
    if rec.gif_frames:
        write_gif(rec.gif_frames, out / 'preview.gif', args.rate / rec.gif_stride)
        outputs['preview'] = str(out / 'preview.gif')
    stats = rec.latency.summary(skip=3)
    summary = {
        'profile': info.profile, 'checkpoint': info.checkpoint, 'trained_on': info.trained_on,
        'input': {'width': args.width, 'height': args.height, 'rate_hz': args.rate,
                  'frames_published': args.frames},
        'latency_ms': {'end_to_end_at_node': stats.pop('total_ms'), 'inference': stats.pop('inference_ms'),
                       'node_overhead': stats.pop('node_overhead_ms'),
                       'preprocess': stats.pop('preprocess_ms'),
                       'postprocess': stats.pop('postprocess_ms'),
                       'end_to_end_at_viewer': percentiles(rec.viewer_latency[3:] or rec.viewer_latency)},
        **stats,
        'frames_lost_before_node': max(0, args.frames - stats['frames_in']) if not args.use_launch else None,
        'overlays_received': rec.overlays_seen,
        'exit_codes': codes, 'elapsed_s': round(elapsed, 1), 'ros_domain_id': args.domain_id,
        'outputs': outputs,
    }
    (out / 'summary.json').write_text(json.dumps(_finite(summary), indent=2, allow_nan=False))
    return summary


def _finite(value: Any) -> Any:
    """NaN/inf -> None, so summary.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_summary(summary: dict[str, Any], out: Path) -> None:
    lat = summary['latency_ms']
    print(f"\njetseg-demo: {summary['profile']} profile, {summary['checkpoint']}, trained on "
          f"{summary['trained_on']}")
    print(f"{'':24s}{'p50 ms':>9s}{'p95 ms':>9s}")
    for key, label in (('end_to_end_at_node', 'end-to-end (node)'), ('inference', 'inference'),
                       ('node_overhead', 'node overhead'), ('end_to_end_at_viewer', 'end-to-end (viewer)')):
        print(f"{label:24s}{lat[key]['p50']:9.1f}{lat[key]['p95']:9.1f}")
    print(f"output rate {summary['output_rate_hz']:.1f} Hz; frames in {summary['frames_in']}, processed "
          f"{summary['frames_processed']}, dropped {summary['frames_dropped']}, rejected "
          f"{summary['frames_rejected']}")
    print(f'outputs in {out.resolve()}/:')
    outputs = summary['outputs']
    for key in ('contact_sheet', 'preview'):
        if key in outputs:
            print(f'  {Path(outputs[key]).name}')
    print(f"  frames/overlay_*.png ({len(outputs['overlay_frames'])} files), summary.json, logs/")


def main(argv: list[str] | None = None) -> int:
    """Entry point of jetseg-demo; 0 on success, 1 if the pipeline produced nothing, 2 on bad options."""
    tune_malloc()  # this process receives every overlay frame
    args = parse_args(argv)
    try:
        summary = run(args)
    except DemoError as err:
        print(f'jetseg-demo: error: {err}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('jetseg-demo: interrupted', file=sys.stderr)
        return 130
    print_summary(summary, args.output)
    if summary['overlays_received'] == 0:
        print('jetseg-demo: error: no overlay image arrived (see logs/)', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
