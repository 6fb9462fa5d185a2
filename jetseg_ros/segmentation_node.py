"""The JetSeg segmentation node: camera images in, labels, colour mask, overlay and reports out.

The node is thin on purpose: it declares parameters, wires QoS and topics, converts
messages (jetseg_ros.image_conversion), schedules frames and reports; the numerics
live in jetseg_core.Segmenter.

Scheduling: the image callback only stores the newest frame in a one-slot mailbox
and returns; a worker thread takes it, segments it and publishes. A frame that
arrives while the worker is busy replaces the waiting one (counted as dropped), so
latency never grows with the input rate.

Run: ``ros2 run jetseg_ros segmentation_node --ros-args -r image:=/camera/image_raw``
or ``python -m jetseg_ros.segmentation_node --ros-args -p profile:=nano``.
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import ColorRGBA, Header

from jetseg_core.backends import BACKENDS
from jetseg_core.malloc import tune_malloc
from jetseg_ros.image_conversion import (
    ImageConversionError,
    compressed_to_rgb,
    image_to_rgb,
    mono_labels_to_image,
    rgb8_image,
)
from jetseg_ros.signals import ignore_sigint, route_sigint_to_rclpy
from jetseg_ros.usage import exit_if_help_requested

NODE_NAME = 'jetseg'
INFERENCE_THREAD = 'jetseg-inference'  # the one thread that runs torch
PROFILES = ('nano', 'agx', 'workstation')
NO_IMAGE_WARNING_S = 5.0
DIAGNOSTICS_PERIOD_S = 1.0
ERROR_LOG_INTERVAL_S = 5.0
MAX_THROTTLED_KINDS = 64
# Sizes, lengths, ages and addresses; not the digits inside names such as 'yuv422' or '16UC1'.
_VARYING_DETAILS = re.compile(r'\b(0x[0-9a-fA-F]+|\d+(\.\d+)?)\b')


# ----------------------------------------------------------------------------- parameters

@dataclass(frozen=True)
class ParameterSpec:
    """One parameter: the single source of its default, description and valid values."""

    name: str
    default: bool | int | float | str
    description: str
    choices: tuple[str, ...] = ()
    min_value: float | None = None
    max_value: float | None = None
    read_only: bool = False

    def descriptor(self) -> ParameterDescriptor:
        desc = ParameterDescriptor(name=self.name, read_only=self.read_only)
        text = self.description
        if self.choices:
            desc.additional_constraints = f"one of: {', '.join(self.choices)}"
            text += f' ({desc.additional_constraints})'
        desc.description = text
        if isinstance(self.default, float):
            desc.type = ParameterType.PARAMETER_DOUBLE
            desc.dynamic_typing = True  # accept `overlay_alpha:=1` as well as 1.0; checked below
            desc.floating_point_range = [FloatingPointRange(
                from_value=float(self.min_value), to_value=float(self.max_value), step=0.0)]
        elif isinstance(self.default, bool):
            desc.type = ParameterType.PARAMETER_BOOL
        elif isinstance(self.default, int):
            desc.type = ParameterType.PARAMETER_INTEGER
            desc.integer_range = [IntegerRange(
                from_value=int(self.min_value), to_value=int(self.max_value), step=1)]
        else:
            desc.type = ParameterType.PARAMETER_STRING
        return desc

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable for this parameter, or None if it is."""
        kind = type(self.default)
        if kind is float:
            ok_type = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok_type = type(value) is kind
        if not ok_type:
            return f"parameter '{self.name}' must be {_TYPE_WORDS[kind]}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"parameter '{self.name}' cannot be '{value}' (valid: {', '.join(self.choices)})"
        if self.min_value is not None and not self.min_value <= value <= self.max_value:
            return (f"parameter '{self.name}' cannot be {value} "
                    f'(valid range: {self.min_value:g}..{self.max_value:g})')
        return None


_TYPE_WORDS = {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string'}


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec('profile', 'nano', 'JetSeg network size: speed/accuracy trade-off for the target board',
                  choices=PROFILES, read_only=True),
    ParameterSpec('checkpoint', '', "Weights: '' = the weights shipped for real cameras (CamVid where "
                  "shipped for the profile), 'camvid' or 'synthetic' = those shipped weights, 'untrained' = "
                  'random init (speed tests only), or a path to a .safetensors checkpoint', read_only=True),
    ParameterSpec('device', 'auto', "Where inference runs; 'auto' picks CUDA when available",
                  choices=('auto', 'cpu', 'cuda'), read_only=True),
    ParameterSpec('precision', 'auto', "Network precision; 'auto' = fp16 on CUDA else fp32; fp16 needs CUDA",
                  choices=('auto', 'fp32', 'fp16'), read_only=True),
    ParameterSpec('backend', 'auto', "What runs the network; 'auto' = TensorRT on CUDA when installed, else "
                  'torch; on CPU OpenVINO, else ONNX Runtime, else torch. An engine is built on the first '
                  'start and cached in ~/.cache/jetseg ($XDG_CACHE_HOME)', choices=BACKENDS, read_only=True),
    ParameterSpec('num_threads', 0, "CPU threads for inference; 0 = the profile's best (nano: 1 on CPU; agx, "
                  "workstation: one per core); /diagnostics 'inference threads' shows the count in effect",
                  min_value=0, max_value=256),
    ParameterSpec('output_resolution', 'input', "Size of the outputs: 'input' (same as the camera image) or "
                  "'network' (the network's input size, cheaper; ~/camera_info is scaled to match)",
                  choices=('input', 'network')),
    ParameterSpec('overlay_alpha', 0.5,
                  'Opacity of the colour mask in ~/overlay (0 = image only, 1 = mask only)',
                  min_value=0.0, max_value=1.0),
    ParameterSpec('qos_reliability', 'best_effort',
                  'Reliability of the image subscription; best_effort hears '
                  'both kinds of publisher, reliable only reliable ones',
                  choices=('best_effort', 'reliable'), read_only=True),
    ParameterSpec('qos_depth', 1,
                  'Queue depth of the image subscription (the node keeps only the newest frame)',
                  min_value=1, max_value=100, read_only=True),
    ParameterSpec('max_frame_age_ms', 0, 'Drop frames older than this (node clock minus image stamp) instead '
                  'of segmenting them; 0 = off', min_value=0, max_value=600000),
    ParameterSpec('publish_color_mask', True,
                  'Publish ~/color_mask (rendered only while someone subscribes)'),
    ParameterSpec('publish_overlay', True, 'Publish ~/overlay (rendered only while someone subscribes)'),
    ParameterSpec('input_transport', 'raw', "'raw' subscribes sensor_msgs/Image on 'image'; 'compressed' "
                  "subscribes sensor_msgs/CompressedImage (JPEG/PNG) on 'image/compressed'",
                  choices=('raw', 'compressed'), read_only=True),
)
PARAMETER_SPECS: dict[str, ParameterSpec] = {spec.name: spec for spec in PARAMETERS}


class StartupError(Exception):
    """A configuration problem found at start-up; its message is the one line the user sees."""


# ----------------------------------------------------------------------------- scheduling

@dataclass
class _Frame:
    msg: Image | CompressedImage
    received_ns: int  # node clock
    received_mono: float  # time.perf_counter()


class NewestFrameSlot:
    """A one-frame mailbox: put() replaces any waiting frame, take() blocks for the next one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Any = None
        self._closed = False

    def put(self, frame: Any) -> bool:
        """Store ``frame``; True if it replaced a frame nobody had taken (a dropped frame)."""
        with self._cond:
            replaced = self._frame is not None
            self._frame = frame
            self._cond.notify()
            return replaced

    def take(self) -> Any:
        """The newest frame, waiting for one; None once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._closed)
            if self._closed:
                return None
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class _Stats:
    """Counters and recent latencies; guarded by the node's stats lock."""

    frames_in: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    frames_rejected: int = 0
    errors: int = 0
    last_error: str = ''
    last_input_mono: float | None = None
    totals_ms: deque = field(default_factory=lambda: deque(maxlen=200))


def _stamp_ns(header: Header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def camera_info_image_size(info: CameraInfo) -> tuple[int, int] | None:
    """(H, W) of the images ``info`` describes: its ROI (the whole sensor when empty), binned;
    None for an uncalibrated camera (size 0)."""
    if not info.width or not info.height:
        return None
    roi = info.roi
    h, w = (roi.height, roi.width) if roi.width and roi.height else (info.height, info.width)
    return h // max(info.binning_y, 1), w // max(info.binning_x, 1)


def scale_camera_info(info: CameraInfo, header: Header, size: tuple[int, int] | None) -> CameraInfo:
    """``info`` re-stamped with ``header``; when the outputs are ``size`` (H, W), the calibration of
    a camera whose whole image is the output.

    The input image is the camera's ROI (all of it when the ROI is empty), binned; K and P are
    for the full unbinned sensor. The output covers that ROI at ``size``, so K and P are shifted
    to the ROI's corner and scaled by output pixels per sensor pixel; ROI and binning are then
    empty. Without ROI or binning this is plain scaling.
    """
    out = CameraInfo()
    out.header = Header(stamp=header.stamp, frame_id=header.frame_id or info.header.frame_id)
    out.height, out.width = info.height, info.width
    out.distortion_model = info.distortion_model
    out.d = list(info.d)
    out.k = list(info.k)
    out.r = list(info.r)
    out.p = list(info.p)
    out.binning_x, out.binning_y = info.binning_x, info.binning_y
    out.roi = RegionOfInterest(x_offset=info.roi.x_offset, y_offset=info.roi.y_offset, height=info.roi.height,
                               width=info.roi.width, do_rectify=info.roi.do_rectify)
    if size is None or not info.width or not info.height:
        return out
    roi = info.roi
    if roi.width and roi.height:
        x0, y0, seen_w, seen_h = roi.x_offset, roi.y_offset, roi.width, roi.height
    else:  # an empty ROI is the whole sensor
        x0, y0, seen_w, seen_h = 0, 0, info.width, info.height
    sx, sy = size[1] / seen_w, size[0] / seen_h
    k, p = list(info.k), list(info.p)
    k[0], k[1], k[2] = k[0] * sx, k[1] * sx, (k[2] - x0) * sx  # k[1]: skew
    k[4], k[5] = k[4] * sy, (k[5] - y0) * sy
    p[0], p[1], p[2], p[3] = p[0] * sx, p[1] * sx, (p[2] - x0) * sx, p[3] * sx  # p[3]: -fx * baseline
    p[5], p[6], p[7] = p[5] * sy, (p[6] - y0) * sy, p[7] * sy  # p[7]: Ty of a vertical stereo pair
    out.k, out.p = k, p
    out.height, out.width = int(size[0]), int(size[1])
    out.binning_x = out.binning_y = 0
    out.roi = RegionOfInterest()
    return out


def _load_message_types() -> tuple[type, type]:
    try:
        from jetseg_ros.msg import ClassInfo, SegmentationLatency
    except ImportError as exc:
        raise StartupError(f'the jetseg_ros messages are not built ({exc}): build the package with colcon '
                           'or run scripts/setup.sh') from None
    return ClassInfo, SegmentationLatency


# ----------------------------------------------------------------------------- node

class SegmentationNode(Node):
    """Subscribes camera images, publishes JetSeg labels, colour mask, overlay and reports.

    Raises StartupError (after logging its one line) on a bad configuration.
    """

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._slot = NewestFrameSlot()
        try:
            self._settings = self._declare_parameters()
            self._msg_types = _load_message_types()
            self._segmenter = self._start_worker()
        except StartupError as exc:
            self.get_logger().error(str(exc))
            raise

        self._stats = _Stats()
        self._stats_lock = threading.Lock()
        self._error_log_times: dict[str, float] = {}
        self._camera_info: CameraInfo | None = None
        self._threads_applied = self._settings['num_threads']
        self._precision_in_use = f"{self._segmenter.precision} ({self._settings['precision']})"
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)

        self._create_publishers()
        self._create_subscriptions()
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._diag_prev = (time.perf_counter(), 0, 0, 0, 0)
        self._diag_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics,
                                             clock=self._steady)
        self._no_image_timer = self.create_timer(NO_IMAGE_WARNING_S, self._warn_if_no_image,
                                                 clock=self._steady)

        seg = self._segmenter
        h, w = seg.input_size
        self.get_logger().info(
            f"ready: profile {seg.profile}, {seg.num_classes} classes, network {h}x{w}, device {seg.device}, "
            f"backend {seg.backend}, threads {self._threads_in_use}, precision {self._precision_in_use}; "
            f"listening on {self._image_topic} ({self._settings['qos_reliability']}, "
            f"depth {self._settings['qos_depth']})")
        self.get_logger().info(f"weights: {self._settings['checkpoint'] or 'shipped'}, trained on "
                               f"{getattr(seg.meta, 'trained_on', '') or 'unknown data'}")

    # ------------------------------------------------------------------ set-up
    def _declare_parameters(self) -> dict[str, Any]:
        # Check command-line / YAML overrides first, so a bad value gets our message, not rclpy's.
        overrides = getattr(self, '_parameter_overrides', {})
        settings: dict[str, Any] = {}
        for spec in PARAMETERS:
            if spec.name in overrides:
                problem = spec.check(overrides[spec.name].value)
                if problem:
                    raise StartupError(problem)
            try:
                value = self.declare_parameter(spec.name, spec.default, spec.descriptor()).value
            except ParameterException as exc:
                raise StartupError(f"invalid parameter '{spec.name}': {exc}") from None
            problem = spec.check(value)
            if problem:
                raise StartupError(problem)
            settings[spec.name] = float(value) if isinstance(spec.default, float) else value
        return settings

    def _start_worker(self) -> Any:
        """Start the inference thread; it loads the segmenter, hands it back here, then serves frames.

        Every torch call runs on that one thread, loading included. A second thread that ever ran
        a parallel op owns a second OpenMP pool; libgomp then counts more threads than cores and
        stops spinning between ops (with OMP_WAIT_POLICY=ACTIVE: 19 instead of 8.5 ms for nano). A
        daemon thread, so that a start-up cut short by Ctrl-C never holds the process open.
        """
        loaded: Future = Future()

        def run() -> None:
            try:
                loaded.set_result(self._load_segmenter())
            except Exception as exc:  # noqa: BLE001 - StartupError and the rest: raised on the caller's thread
                loaded.set_exception(exc)
                return
            self._worker_loop()

        self._worker = threading.Thread(target=run, name=INFERENCE_THREAD, daemon=True)
        self._worker.start()
        while True:
            try:
                return loaded.result(timeout=0.2)
            except FutureTimeoutError:
                if not self.context.ok():  # Ctrl-C while loading: do not wait for the model
                    raise ExternalShutdownException() from None

    def _load_segmenter(self) -> Any:
        from jetseg_core.checkpoint import CheckpointError
        from jetseg_core.inference import Segmenter

        s = self._settings
        try:
            segmenter = Segmenter.from_checkpoint(  # num_threads 0: the Segmenter applies the profile's best
                s['checkpoint'], profile=s['profile'], device=s['device'], precision=s['precision'],
                num_threads=s['num_threads'] or None, backend=s['backend'], log=self.get_logger().info)
            segmenter.warmup()
            self._threads_in_use = segmenter.threads  # count and where it came from, for /diagnostics
        except CheckpointError as exc:
            raise StartupError(f'cannot load checkpoint: {exc}') from None
        except (ValueError, RuntimeError, OSError) as exc:
            raise StartupError(f'cannot start the segmenter: {exc}') from None
        return segmenter

    def _create_publishers(self) -> None:
        out_qos = QoSProfile(depth=2, reliability=QoSReliabilityPolicy.RELIABLE,
                             history=QoSHistoryPolicy.KEEP_LAST)
        latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                             durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
        ClassInfo, SegmentationLatency = self._msg_types

        self._labels_pub = self.create_publisher(Image, '~/labels', out_qos)
        self._color_pub = self.create_publisher(Image, '~/color_mask', out_qos)
        self._overlay_pub = self.create_publisher(Image, '~/overlay', out_qos)
        self._info_pub = self.create_publisher(CameraInfo, '~/camera_info', out_qos)
        self._latency_pub = self.create_publisher(SegmentationLatency, '~/latency', 10)
        self._latency_type = SegmentationLatency
        self._class_info_pub = self.create_publisher(ClassInfo, '~/class_info', latched)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)

        seg = self._segmenter
        info = ClassInfo()
        info.header.stamp = self.get_clock().now().to_msg()
        info.class_ids = list(range(seg.num_classes))
        info.class_names = list(seg.class_names)
        info.class_colors = [ColorRGBA(r=c[0] / 255.0, g=c[1] / 255.0, b=c[2] / 255.0, a=1.0)
                             for c in seg.palette.tolist()]
        info.ignore_index = 255
        info.profile = seg.profile
        info.checkpoint = self._settings['checkpoint'] or f'shipped {seg.profile} weights for real cameras'
        info.trained_on = str(getattr(seg.meta, 'trained_on', ''))
        self._class_info_pub.publish(info)

    def _create_subscriptions(self) -> None:
        s = self._settings
        reliability = (QoSReliabilityPolicy.RELIABLE if s['qos_reliability'] == 'reliable'
                       else QoSReliabilityPolicy.BEST_EFFORT)
        qos = QoSProfile(depth=s['qos_depth'], reliability=reliability, history=QoSHistoryPolicy.KEEP_LAST)
        events = None
        try:
            from rclpy.event_handler import SubscriptionEventCallbacks

            events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        except ImportError:  # older rclpy: the timed warning below still reports mismatches
            pass
        base = self.resolve_topic_name('image')
        if s['input_transport'] == 'compressed':
            self._image_topic = base.rstrip('/') + '/compressed'
            self._image_sub = self.create_subscription(
                CompressedImage, self._image_topic, self._on_image, qos, event_callbacks=events)
        else:
            self._image_topic = base
            self._image_sub = self.create_subscription(Image, 'image', self._on_image, qos,
                                                       event_callbacks=events)
        self._camera_info_sub = self.create_subscription(CameraInfo, 'camera_info', self._on_camera_info, qos)

    # ------------------------------------------------------------------ callbacks (executor thread)
    def _on_image(self, msg: Image | CompressedImage) -> None:
        frame = _Frame(msg, self.get_clock().now().nanoseconds, time.perf_counter())
        with self._stats_lock:
            self._stats.frames_in += 1
            self._stats.last_input_mono = frame.received_mono
        if self._slot.put(frame):
            with self._stats_lock:
                self._stats.frames_dropped += 1

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _on_incompatible_qos(self, event: Any) -> None:
        self.get_logger().warning(
            f'a publisher on {self._image_topic} has QoS incompatible with this subscription '
            f"({self._settings['qos_reliability']}, "
            f"policy {getattr(event, 'last_policy_kind', '?')}): no images "
            'will arrive from it; set qos_reliability:=best_effort or make the publisher reliable')

    def _on_set_parameters(self, params: list[rclpy.parameter.Parameter]) -> SetParametersResult:
        updated = dict(self._settings)
        for param in params:
            spec = PARAMETER_SPECS.get(param.name)
            if spec is None:
                continue
            problem = spec.check(param.value)
            if problem:
                return SetParametersResult(successful=False, reason=problem)
            updated[param.name] = float(param.value) if isinstance(spec.default, float) else param.value
        self._settings = updated  # one reference swap: the worker sees old or new settings, never a mix
        return SetParametersResult(successful=True)

    def _warn_if_no_image(self) -> None:
        self._no_image_timer.cancel()
        with self._stats_lock:
            if self._stats.frames_in:
                return
        own = self._settings['qos_reliability']
        try:
            infos = self.get_publishers_info_by_topic(self._image_topic)
        except Exception:  # noqa: BLE001 - diagnostics only
            infos = []
        if not infos:
            detail = 'no publisher on that topic: check the topic name or the remapping (image:=...)'
        else:
            pubs = ', '.join(f'{i.node_namespace.rstrip("/")}/{i.node_name} '
                             f'({i.qos_profile.reliability.name.lower()})' for i in infos)
            detail = f'publishers: {pubs}'
            if own == 'reliable' and any(i.qos_profile.reliability == QoSReliabilityPolicy.BEST_EFFORT
                                         for i in infos):
                detail += ('; a reliable subscription hears no best-effort publisher: '
                           'set qos_reliability:=best_effort')
        self.get_logger().warning(
            f'no image received on {self._image_topic} after {NO_IMAGE_WARNING_S:g} s '
            f'(subscription QoS {own}; a QoS mismatch gives no data and no error); {detail}')

    # ------------------------------------------------------------------ worker thread
    def _worker_loop(self) -> None:
        while True:
            frame = self._slot.take()
            if frame is None:
                return
            try:
                self._process(frame)
            except ImageConversionError as exc:
                self._record_problem(f'rejected frame: {exc}', rejected=True)
            except Exception as exc:  # noqa: BLE001 - keep serving the next frame
                if not rclpy.ok(context=self.context):
                    return
                self._record_problem(f'processing failed: {type(exc).__name__}: {exc}', rejected=False)

    def _record_problem(self, text: str, rejected: bool) -> None:
        with self._stats_lock:
            if rejected:
                self._stats.frames_rejected += 1
            else:
                self._stats.errors += 1
            self._stats.last_error = text
        if self._log_due(text):
            self.get_logger().error(text)

    def _log_due(self, text: str) -> bool:
        """Whether a line about this kind of problem may be logged now (at most one per interval).

        Problems differ in kind, not in their numbers: 'data length 239 != ...' and 'data length
        238 != ...' share one throttle, so a stream of bad frames cannot flood the log or this dict.
        """
        kind = _VARYING_DETAILS.sub('#', text)
        now = time.monotonic()
        last = self._error_log_times.get(kind)
        if last is not None and now - last < ERROR_LOG_INTERVAL_S:
            return False
        if len(self._error_log_times) >= MAX_THROTTLED_KINDS:
            self._error_log_times.clear()
        self._error_log_times[kind] = now
        return True

    def _apply_num_threads(self, wanted: int) -> None:
        """A run-time change of num_threads, on the inference thread; 0 goes back to the profile's best."""
        if wanted != self._threads_applied:
            self._segmenter.set_num_threads(wanted or None)  # torch's threads and the engine's
            self._threads_in_use = self._segmenter.threads
            self._threads_applied = wanted

    def _process(self, frame: _Frame) -> None:
        s = self._settings
        msg = frame.msg
        header = Header(stamp=msg.header.stamp, frame_id=msg.header.frame_id)
        stamp = _stamp_ns(msg.header)
        age_at_receipt_ms = (frame.received_ns - stamp) / 1e6 if stamp else 0.0
        if s['max_frame_age_ms'] > 0 and stamp:
            age_ms = (self.get_clock().now().nanoseconds - stamp) / 1e6
            if age_ms > s['max_frame_age_ms']:
                with self._stats_lock:
                    self._stats.frames_dropped += 1
                self._log_throttled_warning(
                    f"dropping frames older than max_frame_age_ms ({s['max_frame_age_ms']} ms); "
                    f'last one was {age_ms:.0f} ms old (check clocks / use_sim_time)')
                return
        self._apply_num_threads(s['num_threads'])

        t0 = time.perf_counter()
        rgb = compressed_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)
        decode_ms = (time.perf_counter() - t0) * 1000.0
        out_size = tuple(self._segmenter.input_size) if s['output_resolution'] == 'network' else None
        seg = self._segmenter.segment(rgb, output_size=out_size)
        t1 = time.perf_counter()

        labels = seg.labels
        self._labels_pub.publish(mono_labels_to_image(labels, header))
        want_color = s['publish_color_mask'] and self._color_pub.get_subscription_count() > 0
        want_overlay = s['publish_overlay'] and self._overlay_pub.get_subscription_count() > 0
        if want_color or want_overlay:
            from jetseg_core.inference import nearest_resize
            from jetseg_core.visualize import blend, colorize

            color = colorize(labels, self._segmenter.palette)
            if want_color:
                self._color_pub.publish(rgb8_image(color, header))
            if want_overlay:
                base = nearest_resize(rgb, labels.shape)  # the input itself unless output is at network size
                self._overlay_pub.publish(rgb8_image(blend(base, color, s['overlay_alpha']), header))
        info = self._camera_info
        if info is not None and self._info_pub.get_subscription_count() > 0:
            described = camera_info_image_size(info)
            if described is not None and described != rgb.shape[:2]:
                # A stale or wrong calibration, restamped as if it fitted, would mislead every consumer.
                self._log_throttled_warning(
                    f'camera_info describes {described[1]}x{described[0]} images but they are '
                    f'{rgb.shape[1]}x{rgb.shape[0]}: ~/camera_info is not published until they agree')
            else:
                self._info_pub.publish(scale_camera_info(info, header, labels.shape if out_size else None))
        render_ms = (time.perf_counter() - t1) * 1000.0

        publish_ns = self.get_clock().now().nanoseconds
        total_ms = ((publish_ns - stamp) / 1e6 if stamp
                    else (time.perf_counter() - frame.received_mono) * 1000.0)
        with self._stats_lock:
            st = self._stats
            st.frames_processed += 1
            st.totals_ms.append(total_ms)
            counters = (st.frames_in, st.frames_processed, st.frames_dropped, st.frames_rejected)
        lat = self._latency_type()
        lat.header = header
        lat.age_at_receipt_ms = float(age_at_receipt_ms)
        lat.preprocess_ms = float(decode_ms + seg.preprocess_ms)
        lat.inference_ms = float(seg.inference_ms)
        lat.postprocess_ms = float(seg.postprocess_ms + render_ms)
        lat.total_ms = float(total_ms)
        lat.frames_in, lat.frames_processed, lat.frames_dropped, lat.frames_rejected = counters
        self._latency_pub.publish(lat)

    def _log_throttled_warning(self, text: str) -> None:
        if self._log_due(text):
            self.get_logger().warning(text)

    # ------------------------------------------------------------------ diagnostics (executor thread)
    def _publish_diagnostics(self) -> None:
        now = time.perf_counter()
        with self._stats_lock:
            st = self._stats
            current = (now, st.frames_in, st.frames_processed, st.frames_rejected, st.errors)
            totals = np.array(st.totals_ms, dtype=np.float64)
            dropped, last_error, last_input = st.frames_dropped, st.last_error, st.last_input_mono
        prev = self._diag_prev
        self._diag_prev = current
        dt = max(now - prev[0], 1e-6)
        in_rate, out_rate = (current[1] - prev[1]) / dt, (current[2] - prev[2]) / dt
        new_rejects, new_errors = current[3] - prev[3], current[4] - prev[4]
        p50, p95 = (np.percentile(totals, [50, 95]).tolist() if totals.size else (float('nan'),) * 2)

        status = DiagnosticStatus()
        status.name = f'{self.get_fully_qualified_name().lstrip("/")}: semantic segmentation'
        status.hardware_id = self._segmenter.device
        if new_rejects or new_errors:
            status.level = DiagnosticStatus.ERROR
            status.message = last_error
        elif last_input is None:
            status.level = DiagnosticStatus.WARN
            status.message = f'no images received on {self._image_topic} (check topic name and QoS)'
        elif now - last_input > 3.0:
            status.level = DiagnosticStatus.WARN
            status.message = f'no images for {now - last_input:.0f} s on {self._image_topic}'
        else:
            status.level = DiagnosticStatus.OK
            status.message = f'segmenting at {out_rate:.1f} Hz'
        seg = self._segmenter
        values = {
            'input rate (Hz)': f'{in_rate:.2f}', 'output rate (Hz)': f'{out_rate:.2f}',
            'latency p50 (ms)': f'{p50:.1f}', 'latency p95 (ms)': f'{p95:.1f}',
            'frames in': current[1], 'frames processed': current[2], 'frames dropped': dropped,
            'frames rejected': current[3], 'last error': last_error or 'none',
            'profile': seg.profile, 'device': seg.device, 'backend': seg.backend,
            'inference threads': self._threads_in_use, 'precision': self._precision_in_use,
            'input topic': self._image_topic,
        }
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._diag_pub.publish(array)

    # ------------------------------------------------------------------ shutdown
    def close(self) -> bool:
        """Stop the worker; False if it is still inside a frame after a few seconds."""
        self._slot.close()
        self._worker.join(timeout=3.0)
        return not self._worker.is_alive()


def _inference_thread_running() -> bool:
    return any(t.name == INFERENCE_THREAD and t.is_alive() for t in threading.enumerate())


def main(args: list[str] | None = None) -> None:
    """Console entry point; exits with status 2 (one log line, no traceback) on a bad configuration."""
    exit_if_help_requested(args, 'segmentation_node', (__doc__ or '').split('\n\n')[0],
                           ((p.name, p.default, p.descriptor().description) for p in PARAMETERS))
    # With more than one inference thread (agx, workstation, or num_threads > 1): a robot's CPU
    # is shared, and OpenMP threads that spin-wait between ops collapse when another process
    # keeps one core busy. The nano node on 2 threads fell from 30 Hz to 1.2 Hz (inference 9 ms
    # -> 0.5 s) against one busy Python process on 2 cores; passive waiting kept 30 Hz. On a
    # dedicated CPU spinning is faster: set OMP_WAIT_POLICY yourself. libgomp reads it when
    # torch loads (on the inference thread, later): the user's value wins.
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    tune_malloc()
    route_sigint_to_rclpy()
    try:
        rclpy.init(args=args)
    except Exception as exc:  # noqa: BLE001 - e.g. malformed --ros-args
        print(f'segmentation_node: {exc}', file=sys.stderr)
        raise SystemExit(2) from None
    node = None
    exit_code = 0
    try:
        # Before the node: rclpy prints tracebacks when an executor is made on a context that
        # Ctrl-C has already shut down, and loading the node takes seconds.
        executor = SingleThreadedExecutor()
        node = SegmentationNode()
        executor.add_node(node)
        executor.spin()
    except StartupError:
        exit_code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
        # Ctrl-C during start-up: rclpy shut the context down under the entities being created.
    finally:
        worker_stopped = node.close() if node is not None else not _inference_thread_running()
        if not worker_stopped:
            # The inference thread is still inside a frame, or still loading the model after a
            # Ctrl-C during start-up. Tearing rcl down under it can deadlock (seen once under launch
            # on a loaded machine), and the interpreter aborts when it exits under running torch
            # threads: leave at once.
            ignore_sigint()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exit_code)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        ignore_sigint()
    if exit_code:
        raise SystemExit(exit_code)


if __name__ == '__main__':
    main()
