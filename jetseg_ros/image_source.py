"""Camera stand-in: publishes frames from synthetic scenes, a video, an image folder or a rosbag2.

It lets the segmentation node be run, demonstrated and tested without a camera. Frames go out on
the relative topics ``camera/image_raw`` and ``camera/camera_info`` (remap them like a camera
driver's), stamped with the node clock so ``use_sim_time`` works, at a fixed rate.

Run: ``ros2 run jetseg_ros image_source --ros-args -p source:=video -p path:=drive.mp4``
or ``python -m jetseg_ros.image_source --ros-args -p source:=synthetic -p rate:=30.0``.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from jetseg_core.malloc import tune_malloc
from jetseg_core.predict import IMAGE_SUFFIXES, read_image
from jetseg_ros.image_conversion import (
    SUPPORTED_ENCODINGS,
    compressed_to_rgb,
    image_to_rgb,
    rgb_to_image,
)
from jetseg_ros.signals import ignore_sigint, route_sigint_to_rclpy
from jetseg_ros.usage import exit_if_help_requested

SOURCES = ('synthetic', 'video', 'folder', 'rosbag')
SYNTHETIC_DEFAULT_SIZE = (480, 640)  # (H, W)
HORIZONTAL_FOV_DEG = 70.0  # a typical automotive / robot camera
NO_CLOCK_WARNING_S = 3.0
#: 4:2:2 encodings carry pixels in pairs (two lumas share one chroma pair): the width must be even.
PIXEL_PAIR_ENCODINGS = frozenset({'yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv'})


class SourceError(Exception):
    """A source that cannot be opened or read; the message names the path and the problem."""


class FrameReader(Protocol):
    """What every source provides: frames as RGB uint8 arrays, in order."""

    def read(self) -> np.ndarray | None:
        """Next frame (HxWx3 uint8 RGB) or None at the end of the source."""

    def rewind(self) -> None:
        """Start again from the first frame (for ``loop``)."""


def pinhole_camera_info(width: int, height: int, frame_id: str = 'camera',
                        hfov_deg: float = HORIZONTAL_FOV_DEG) -> CameraInfo:
    """A plausible, distortion-free pinhole calibration for a frame size (square pixels, centred)."""
    fx = width / (2.0 * math.tan(math.radians(hfov_deg) / 2.0))
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    info = CameraInfo()
    info.header.frame_id = frame_id
    info.width, info.height = int(width), int(height)
    info.distortion_model = 'plumb_bob'
    info.d = [0.0] * 5
    info.k = [fx, 0.0, cx, 0.0, fx, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [fx, 0.0, cx, 0.0, 0.0, fx, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def output_size(width: int, height: int, source_w: int, source_h: int) -> tuple[int, int]:
    """(width, height) of the frames sent: a 0 follows the other side at the source's aspect
    ratio; two 0s keep the source size."""
    if width <= 0 and height <= 0:
        return source_w, source_h
    if width <= 0:
        width = max(1, round(source_w * height / source_h))
    if height <= 0:
        height = max(1, round(source_h * width / source_w))
    return width, height


def resize_rgb(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize to width x height, completed by :func:`output_size`."""
    h, w = rgb.shape[:2]
    width, height = output_size(width, height, w, h)
    if (width, height) == (w, h):
        return rgb
    from PIL import Image as PILImage
    return np.asarray(PILImage.fromarray(rgb).resize((width, height), PILImage.BILINEAR))


class SyntheticReader:
    """Endless synthetic driving scenes: a pool of seeded scenes, each shown as a short drive forward.

    Generating a 640x480 scene takes 100-200 ms, so the pool is made up front and each scene is
    reused for ``hold`` frames with a growing centre zoom; that keeps any rate steady and gives the
    stream (and the demo's animation) motion instead of a slide show. Zoomed frames are kept after
    the first loop (up to ``CACHE_BYTES``), so the source costs little CPU, like a camera driver.
    """

    CACHE_BYTES = 128 * 2**20

    def __init__(self, width: int, height: int, seed: int = 0, scenes: int = 8, hold: int = 10) -> None:
        from jetseg_core.data.synthetic import generate_scene
        width, height = output_size(width, height, SYNTHETIC_DEFAULT_SIZE[1], SYNTHETIC_DEFAULT_SIZE[0])
        size = (height, width)
        self._scenes = [generate_scene(seed + i, size)[0] for i in range(max(1, scenes))]
        self._hold = max(1, hold)
        self._index = 0
        self._cache: dict[int, np.ndarray] = {}
        self._cache_frames = self.CACHE_BYTES // self._scenes[0].nbytes

    def read(self) -> np.ndarray:
        key = self._index % (len(self._scenes) * self._hold)
        self._index += 1
        frame = self._cache.get(key)
        if frame is None:
            frame = self._zoomed(*divmod(key, self._hold))
            if len(self._cache) < self._cache_frames:
                self._cache[key] = frame
        return frame

    def _zoomed(self, scene: int, step: int) -> np.ndarray:
        rgb = self._scenes[scene]
        if step == 0:
            return rgb
        h, w = rgb.shape[:2]
        keep = 1.0 - 0.25 * step / self._hold  # up to a 1.33x zoom towards the horizon
        ch, cw = max(1, round(h * keep)), max(1, round(w * keep))
        top, left = round((h - ch) * 0.45), (w - cw) // 2
        from PIL import Image as PILImage
        crop = PILImage.fromarray(rgb[top:top + ch, left:left + cw])
        return np.asarray(crop.resize((w, h), PILImage.BILINEAR))

    def rewind(self) -> None:
        self._index = 0


class FolderReader:
    """The images of a folder in sorted file-name order."""

    def __init__(self, path: Path) -> None:
        if not path.is_dir():
            raise SourceError(f'{path}: not a folder (source:=folder needs a folder of images)')
        self._files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            suffixes = ', '.join(sorted(IMAGE_SUFFIXES))
            raise SourceError(f'{path}: no images in this folder (looked for {suffixes})')
        self._index = 0
        self._load(self._files[0])  # fail now, with the file name, rather than mid-stream

    @staticmethod
    def _load(file: Path) -> np.ndarray:
        try:
            return read_image(file)
        except ValueError as err:
            raise SourceError(str(err)) from None

    def read(self) -> np.ndarray | None:
        if self._index >= len(self._files):
            return None
        file = self._files[self._index]
        self._index += 1
        return self._load(file)

    def rewind(self) -> None:
        self._index = 0


class VideoReader:
    """Frames of a video file decoded by OpenCV."""

    def __init__(self, path: Path) -> None:
        try:
            import cv2
        except ImportError:
            raise SourceError(f'{path}: source:=video needs OpenCV '
                              '(pip install opencv-python-headless)') from None
        if not path.is_file():
            raise SourceError(f'{path}: not a file (source:=video needs a video file)')
        self._cv2 = cv2
        self._path = path
        self._cap = cv2.VideoCapture(str(path))
        first = self._grab()
        if first is None:
            raise SourceError(f'{path}: cannot decode any frame from this video file')
        self._pending: np.ndarray | None = first

    def _grab(self) -> np.ndarray | None:
        if not self._cap.isOpened():
            return None
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        if bgr.ndim == 2:
            return self._cv2.cvtColor(bgr, self._cv2.COLOR_GRAY2RGB)
        return self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB)

    def read(self) -> np.ndarray | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        return self._grab()

    def rewind(self) -> None:
        self._cap.release()
        self._cap = self._cv2.VideoCapture(str(self._path))
        self._pending = None


class RosbagReader:
    """sensor_msgs/Image or CompressedImage messages of one topic of a rosbag2 (directory, .db3 or .mcap)."""

    IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')

    def __init__(self, path: Path, topic: str = '') -> None:
        try:
            from rosbags.highlevel import AnyReader, AnyReaderError
            from rosbags.typesys import Stores, get_typestore
        except ImportError:
            raise SourceError(f'{path}: source:=rosbag needs the rosbags library '
                              '(pip install rosbags)') from None
        if not path.exists():
            raise SourceError(f'{path}: does not exist')
        self._path = path
        try:
            # sensor_msgs images are the same in every ROS 2 release: take the newest store this
            # rosbags knows (older releases lack ROS2_KILTED) for bags that carry no definitions.
            newest = next((getattr(Stores, name) for name in ('ROS2_KILTED', 'ROS2_JAZZY', 'ROS2_HUMBLE')
                           if hasattr(Stores, name)), None)
            if newest is None:
                raise SourceError('this rosbags release knows no ROS 2 message types: pip install -U rosbags')
            self._reader = AnyReader([path], default_typestore=get_typestore(newest))
            self._reader.open()
        except (AnyReaderError, OSError, ValueError, KeyError) as err:
            raise SourceError(f'{path}: cannot read this rosbag2 ({err})') from None
        images = [c for c in self._reader.connections if c.msgtype in self.IMAGE_TYPES]
        if not images:
            found = ', '.join(sorted({f'{c.topic} [{c.msgtype}]' for c in self._reader.connections}))
            raise SourceError(f'{path}: no sensor_msgs/Image or CompressedImage topic in this bag '
                              f'(topics: {found or "none"})')
        if topic:
            chosen = [c for c in images if c.topic == topic]
            if not chosen:
                names = ', '.join(sorted({c.topic for c in images}))
                raise SourceError(f'{path}: no image topic {topic!r} in this bag (image topics: {names})')
        else:
            chosen = [c for c in images if c.topic == images[0].topic]
        self.topic = chosen[0].topic
        self._connections = chosen
        self._messages = None
        self.rewind()
        first = self._next()
        if first is None:
            raise SourceError(f'{path}: topic {self.topic} holds no messages')
        self._pending: np.ndarray | None = first

    def _next(self) -> np.ndarray | None:
        for connection, _, raw in self._messages:
            msg = self._reader.deserialize(raw, connection.msgtype)
            try:
                if connection.msgtype.endswith('CompressedImage'):
                    ros = CompressedImage(format=msg.format, data=msg.data.tobytes())
                    return compressed_to_rgb(ros)
                ros = Image(height=msg.height, width=msg.width, encoding=msg.encoding,
                            is_bigendian=msg.is_bigendian, step=msg.step, data=msg.data.tobytes())
                return image_to_rgb(ros)
            except ValueError as err:
                raise SourceError(f'{self._path}: cannot convert a message on {self.topic} ({err})') from None
        return None

    def read(self) -> np.ndarray | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        return self._next()

    def rewind(self) -> None:
        self._messages = self._reader.messages(connections=self._connections)
        self._pending = None


def open_source(source: str, path: str, width: int = 0, height: int = 0, topic: str = '',
                seed: int = 0, scenes: int = 8) -> FrameReader:
    """Open a frame source by name; SourceError with the path and the problem if that is impossible."""
    if source not in SOURCES:
        raise SourceError(f"source '{source}': unknown (choose one of {', '.join(SOURCES)})")
    if source == 'synthetic':
        return SyntheticReader(width, height, seed, scenes)
    if not path:
        raise SourceError(f"source '{source}': needs the 'path' parameter")
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(f'{p}: does not exist')
    if source == 'folder':
        return FolderReader(p)
    if source == 'video':
        return VideoReader(p)
    return RosbagReader(p, topic)


# (name, default, description): declared by the node and listed by --help.
PARAMETERS: tuple[tuple[str, object, str], ...] = (
    ('source', 'synthetic', f"frame source: {' | '.join(SOURCES)}"),
    ('path', '', 'video file, image folder or rosbag2 (directory, .db3, .mcap)'),
    ('topic', '', 'rosbag image topic to replay; empty = the first image topic'),
    ('rate', 15.0, 'frames per second'),
    ('width', 0, 'output width in pixels; 0 = from height keeping the aspect ratio, or the source '
                 'size (synthetic: 640)'),
    ('height', 0, 'output height in pixels; 0 = from width keeping the aspect ratio, or the source '
                  'size (synthetic: 480)'),
    ('encoding', 'rgb8', f"image encoding: {', '.join(SUPPORTED_ENCODINGS)}"),
    ('frame_id', 'camera', 'header.frame_id of images and camera_info'),
    ('loop', True, 'restart a video, folder or bag at its end (synthetic never ends)'),
    ('num_frames', 0, 'frames to publish, then exit 0; 0 = until the source ends or forever'),
    ('qos_reliability', 'reliable', 'reliable | best_effort (reliable reaches both kinds)'),
    ('seed', 0, 'first synthetic scene seed'),
    ('synthetic_scenes', 8, 'distinct synthetic scenes, generated at start (100-200 ms each)'),
    ('wait_for_subscribers', 0, 'hold the first frame until this many subscribers see camera/image_raw'),
)


class ImageSource(Node):
    """Publishes one frame per timer tick, plus a camera_info with the same header."""

    def __init__(self, **kwargs) -> None:
        super().__init__('image_source', **kwargs)
        for name, default, description in PARAMETERS:
            # rate: dynamic typing, so that `rate:=30` works as well as `rate:=30.0`; checked below
            self.declare_parameter(name, default, ParameterDescriptor(
                description=description, dynamic_typing=isinstance(default, float)))

        value = lambda name: self.get_parameter(name).value
        try:
            self.rate = float(value('rate'))
        except (TypeError, ValueError):
            raise SourceError(f"rate '{value('rate')}': must be a number of frames per second") from None
        self.encoding = str(value('encoding')).strip().lower()
        self.frame_id = str(value('frame_id'))
        self.loop = bool(value('loop'))
        self.num_frames = int(value('num_frames'))
        self.width, self.height = int(value('width')), int(value('height'))
        self.wait_for_subscribers = int(value('wait_for_subscribers'))
        reliability = str(value('qos_reliability')).lower().replace('-', '_')
        if self.rate <= 0 or not math.isfinite(self.rate):
            raise SourceError(f'rate {self.rate}: must be a positive number of frames per second')
        if self.encoding not in SUPPORTED_ENCODINGS:
            raise SourceError(f"encoding '{self.encoding}': unsupported (choose one of "
                              f"{', '.join(SUPPORTED_ENCODINGS)})")
        self._pixel_pairs = self.encoding in PIXEL_PAIR_ENCODINGS
        if self._pixel_pairs and self.width % 2:
            raise SourceError(f'width {self.width} is odd, but {self.encoding} carries pixels in pairs; '
                              'choose an even width (or 0: an even width is then derived)')
        self._evened_width = False
        if reliability not in ('reliable', 'best_effort'):
            raise SourceError(f"qos_reliability '{reliability}': choose reliable or best_effort")
        if self.width < 0 or self.height < 0 or self.num_frames < 0:
            raise SourceError('width, height and num_frames must not be negative')

        self.source_name = str(value('source'))
        self.reader = open_source(self.source_name, str(value('path')), self.width, self.height,
                                  str(value('topic')), int(value('seed')),
                                  int(value('synthetic_scenes')))
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                         reliability=(ReliabilityPolicy.RELIABLE if reliability == 'reliable'
                                      else ReliabilityPolicy.BEST_EFFORT))
        self.image_pub = self.create_publisher(Image, 'camera/image_raw', qos)
        self.info_pub = self.create_publisher(CameraInfo, 'camera/camera_info', qos)
        self.published = 0
        self.done = False
        self._info: CameraInfo | None = None
        self._ready_since: float | None = None
        self._timer = self.create_timer(1.0 / self.rate, self._tick)  # on the node clock: sim time too
        if self.get_parameter('use_sim_time').value:
            self._clock_check = self.create_timer(NO_CLOCK_WARNING_S, self._warn_if_no_clock,
                                                  clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f'publishing {self.source_name} frames on {self.image_pub.topic_name} at {self.rate:g} Hz '
            f'({self.encoding}' + (f', {self.num_frames} frames' if self.num_frames else '') + ')')

    def _warn_if_no_clock(self) -> None:
        """Nothing on /clock: with use_sim_time the node clock stands at 0, and no tick ever comes."""
        if self.published or self.get_clock().now().nanoseconds:
            self._clock_check.cancel()
            return
        self.get_logger().warning(
            'use_sim_time is true but nothing publishes /clock, so no frame is published: start the '
            'simulator or `ros2 bag play --clock`, or set use_sim_time:=false')

    def _subscribers_ready(self) -> bool:
        if self.wait_for_subscribers <= 0:
            return True
        if self.image_pub.get_subscription_count() < self.wait_for_subscribers:
            self._ready_since = None
            return False
        # Discovery has matched; give the data connection (LARGE_DATA uses TCP) a moment to come up.
        now = time.monotonic()
        self._ready_since = self._ready_since or now
        if now - self._ready_since < 1.0:
            return False
        self.wait_for_subscribers = 0
        return True

    def _next_frame(self) -> np.ndarray | None:
        frame = self.reader.read()
        if frame is None and self.loop and self.published > 0:
            self.reader.rewind()
            frame = self.reader.read()
        return frame

    def _frame_size(self, frame: np.ndarray) -> tuple[int, int]:
        """(width, height) to send a frame at; a derived odd width becomes even for 4:2:2 encodings."""
        width, height = output_size(self.width, self.height, frame.shape[1], frame.shape[0])
        if self._pixel_pairs and width % 2:
            width = width - 1 if width > 1 else 2
            if not self._evened_width:
                self._evened_width = True
                self.get_logger().info(f'{self.encoding} needs an even width: frames are sent '
                                       f'{width}x{height}')
        return width, height

    def _tick(self) -> None:
        if self.done or not self._subscribers_ready():
            return
        frame = self._next_frame()
        if frame is None:
            self.get_logger().info(f'{self.source_name} source ended after {self.published} frames')
            self.done = True
            return
        frame = resize_rgb(frame, *self._frame_size(frame))
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.frame_id)
        image = rgb_to_image(frame, self.encoding, header)
        h, w = frame.shape[:2]
        if self._info is None or (self._info.width, self._info.height) != (w, h):
            self._info = pinhole_camera_info(w, h, self.frame_id)
        self._info.header = header
        self.image_pub.publish(image)
        self.info_pub.publish(self._info)
        self.published += 1
        if self.num_frames and self.published >= self.num_frames:
            self.done = True


def _fail(message: str) -> int:
    print(f'image_source: error: {message}', file=sys.stderr, flush=True)
    return 2


def main(args: list[str] | None = None) -> int:
    """Entry point of `image_source`: 0 after num_frames / the end of the source / Ctrl-C, 2 on bad input."""
    exit_if_help_requested(args, 'image_source', (__doc__ or '').split('\n\n')[0], PARAMETERS)
    tune_malloc()  # a new frame-sized message every tick
    route_sigint_to_rclpy()
    rclpy.init(args=args)
    node = None
    try:
        # One executor, made first: rclpy.spin_once's global executor is rebuilt after a Ctrl-C
        # has shut the context down, and rclpy then prints tracebacks for the half-built one.
        executor = SingleThreadedExecutor()
        node = ImageSource()
        executor.add_node(node)
        while rclpy.ok() and not node.done:
            executor.spin_once(timeout_sec=0.1)
        # Let the last frames leave the process before the publisher goes away.
        end = time.monotonic() + 0.5
        while rclpy.ok() and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        return 0
    except SourceError as err:
        return _fail(str(err))
    except ParameterException as err:
        return _fail(f'bad parameter: {err}')
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    except Exception:
        if rclpy.ok():
            raise
        return 0  # Ctrl-C during start-up: rclpy shut the context down under the entities being created
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        ignore_sigint()


if __name__ == '__main__':
    sys.exit(main())
