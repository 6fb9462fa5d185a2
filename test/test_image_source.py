"""image_source: real processes publishing over DDS, received by an in-process subscriber."""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest
from ros_testing import (
    BEST_EFFORT,
    RELIABLE_DEEP,
    REPO_ROOT,
    RosHarness,
    RosProcess,
    new_domain_id,
    python_module_command,
    ros_env,
)
from sensor_msgs.msg import CameraInfo, Image

from jetseg_ros.image_conversion import image_to_rgb

MODULE = 'jetseg_ros.image_source'
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (240, 240, 20), (200, 40, 220)]


def run_source(params: dict, frames: int, timeout: float = 40.0) -> tuple[list[Image], list[CameraInfo], int]:
    """Start image_source, record `frames` images + camera_infos, return them and its exit code."""
    domain = new_domain_id()
    params = {'wait_for_subscribers': 1, **params}
    with RosHarness(domain) as ros:
        images = ros.record('camera/image_raw', Image, RELIABLE_DEEP)
        infos = ros.record('camera/camera_info', CameraInfo, RELIABLE_DEEP)
        with RosProcess(python_module_command(MODULE, params), domain) as proc:
            try:
                received = images.wait_for_count(frames, timeout)
                infos.wait_for_count(frames, 10)
            except AssertionError as err:
                raise AssertionError(f'{err}\n--- image_source output ---\n{proc.output}') from None
            rc = proc.wait(20)
            assert rc is not None, f'image_source did not exit after its frames:\n{proc.output}'
        return received, infos.messages, rc


def assert_camera_info_matches(image: Image, info: CameraInfo) -> None:
    assert (info.width, info.height) == (image.width, image.height)
    assert info.header.stamp == image.header.stamp and info.header.frame_id == image.header.frame_id
    fx, _, cx, _, fy, cy = info.k[:6]
    assert fx == fy > 0 and abs(cx - (image.width - 1) / 2) < 1 and abs(cy - (image.height - 1) / 2) < 1
    assert list(info.k[6:]) == [0.0, 0.0, 1.0] and list(info.d) == [0.0] * 5


def test_synthetic_frames_have_requested_size_encoding_rate_and_camera_info() -> None:
    from jetseg_core.data.synthetic import generate_scene

    images, infos, rc = run_source({'source': 'synthetic', 'width': 160, 'height': 120, 'encoding': 'bgr8',
                                    'rate': 20.0, 'num_frames': 12, 'synthetic_scenes': 2,
                                    'frame_id': 'front_cam'}, frames=12)
    assert rc == 0
    assert len(images) == 12
    for msg in images:
        assert (msg.width, msg.height, msg.encoding, msg.step) == (160, 120, 'bgr8', 480)
        assert msg.header.frame_id == 'front_cam'
    # Channel order really is BGR: decoding gives back the generated scene of seed 0.
    np.testing.assert_array_equal(image_to_rgb(images[0]), generate_scene(0, (120, 160))[0])
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in images]
    period = statistics.median(np.diff(stamps))
    assert 0.04 <= period <= 0.06, f'median frame period {period:.3f} s at rate 20 Hz'
    by_stamp = {(i.header.stamp.sec, i.header.stamp.nanosec): i for i in infos}
    for msg in images:
        assert_camera_info_matches(msg, by_stamp[(msg.header.stamp.sec, msg.header.stamp.nanosec)])


@pytest.mark.parametrize(('width', 'height', 'expected'), [(320, 0, (240, 320)), (0, 120, (120, 160)),
                                                         (0, 0, (480, 640))])
def test_synthetic_scenes_keep_their_aspect_ratio_when_one_side_is_given(width, height, expected) -> None:
    from jetseg_ros.image_source import SyntheticReader

    assert SyntheticReader(width, height, scenes=1).read().shape == (*expected, 3)


def test_folder_frames_come_in_file_name_order_resized_and_end_without_loop(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    for name, colour in zip(['b.png', 'a.png', 'c.jpg'], COLOURS[:3], strict=True):
        PILImage.fromarray(np.full((48, 64, 3), colour, np.uint8)).save(tmp_path / name)
    (tmp_path / 'notes.txt').write_text('not an image')
    images, infos, rc = run_source({'source': 'folder', 'path': str(tmp_path), 'width': 32, 'height': 24,
                                    'loop': False, 'rate': 30.0}, frames=3)
    assert rc == 0, 'the source should exit 0 at the end of the folder'
    assert [(m.width, m.height) for m in images] == [(32, 24)] * 3
    means = [image_to_rgb(m).reshape(-1, 3).mean(0) for m in images]
    for mean, colour in zip(means, [COLOURS[1], COLOURS[0], COLOURS[2]], strict=True):  # a, b, c
        assert np.abs(mean - colour).max() < 8, (mean, colour)
    assert_camera_info_matches(images[0], infos[0])


def test_video_frames_are_decoded_in_order_in_the_requested_encoding(tmp_path: Path) -> None:
    cv2 = pytest.importorskip('cv2', reason='video sources need OpenCV')
    path = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10.0, (64, 48))
    assert writer.isOpened(), 'OpenCV cannot write MJPG here'
    for colour in COLOURS:
        writer.write(np.full((48, 64, 3), colour[::-1], np.uint8))  # OpenCV writes BGR
    writer.release()
    images, _, rc = run_source({'source': 'video', 'path': str(path), 'encoding': 'yuyv', 'loop': False,
                                'rate': 30.0}, frames=5)
    assert rc == 0
    assert [(m.width, m.height, m.encoding) for m in images] == [(64, 48, 'yuyv')] * 5
    for msg, colour in zip(images, COLOURS, strict=True):
        mean = image_to_rgb(msg).reshape(-1, 3).mean(0)
        assert np.abs(mean - colour).max() < 20, (mean, colour)  # JPEG + YUV 4:2:2 round trip


def write_bag(path: Path) -> None:
    """A rosbag2 with a raw rgb8 topic (red frames) and a PNG-compressed topic (blue frames)."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    from jetseg_ros.image_conversion import rgb_to_compressed

    store = get_typestore(Stores.ROS2_KILTED)
    raw_t, comp_t = 'sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage'
    RawImage, Compressed = store.types[raw_t], store.types[comp_t]
    Header, Time = store.types['std_msgs/msg/Header'], store.types['builtin_interfaces/msg/Time']
    red, blue = np.full((30, 40, 3), COLOURS[0], np.uint8), np.full((30, 40, 3), COLOURS[2], np.uint8)
    with Writer(path, version=9) as bag:
        front = bag.add_connection('/front/image_raw', raw_t, typestore=store)
        rear = bag.add_connection('/rear/image/compressed', comp_t, typestore=store)
        png = np.frombuffer(bytes(rgb_to_compressed(blue, 'png').data), np.uint8)
        for i in range(4):
            header = Header(stamp=Time(sec=100 + i, nanosec=0), frame_id='bag_cam')
            raw = RawImage(header=header, height=30, width=40, encoding='rgb8', is_bigendian=0, step=120,
                           data=red.reshape(-1))
            bag.write(front, (100 + i) * 10**9, store.serialize_cdr(raw, raw_t))
            bag.write(rear, (100 + i) * 10**9 + 1, store.serialize_cdr(
                Compressed(header=header, format='png', data=png), comp_t))


@pytest.mark.parametrize(('topic', 'colour'), [('', COLOURS[0]), ('/rear/image/compressed', COLOURS[2])])
def test_rosbag_images_of_the_chosen_or_first_image_topic_are_replayed(tmp_path: Path, topic: str,
                                                                       colour: tuple[int, int, int]) -> None:
    pytest.importorskip('rosbags', reason='rosbag sources need the rosbags library')
    write_bag(tmp_path / 'drive')
    images, infos, rc = run_source({'source': 'rosbag', 'path': str(tmp_path / 'drive'), 'topic': topic,
                                    'loop': False, 'rate': 30.0}, frames=4)
    assert rc == 0
    assert [(m.width, m.height, m.encoding) for m in images] == [(40, 30, 'rgb8')] * 4
    assert all(image_to_rgb(m)[0, 0].tolist() == list(colour) for m in images)
    assert images[0].header.frame_id == 'camera'  # restamped: the node clock, our frame_id
    assert_camera_info_matches(images[-1], infos[-1])


@pytest.mark.parametrize('case', ['missing_folder', 'empty_folder', 'garbage_video', 'bag_without_images'])
def test_unusable_path_exits_2_with_one_clear_line_and_no_traceback(tmp_path: Path, case: str) -> None:
    params = {'missing_folder': {'source': 'folder', 'path': str(tmp_path / 'nowhere')},
              'empty_folder': {'source': 'folder', 'path': str(tmp_path)},
              'garbage_video': {'source': 'video', 'path': str(tmp_path / 'clip.avi')},
              'bag_without_images': {'source': 'rosbag', 'path': str(tmp_path / 'bag')}}[case]
    if case == 'garbage_video':
        (tmp_path / 'clip.avi').write_bytes(b'this is not a video' * 100)
    if case == 'bag_without_images':
        from rosbags.rosbag2 import Writer
        from rosbags.typesys import Stores, get_typestore
        store = get_typestore(Stores.ROS2_KILTED)
        with Writer(tmp_path / 'bag', version=9) as bag:
            conn = bag.add_connection('/chatter', 'std_msgs/msg/String', typestore=store)
            bag.write(conn, 1, store.serialize_cdr(store.types['std_msgs/msg/String'](data='hi'),
                                                   'std_msgs/msg/String'))
    with RosProcess(python_module_command(MODULE, params), new_domain_id()) as proc:
        rc = proc.wait(30)
    out = proc.output
    assert rc == 2, out
    errors = [line for line in out.splitlines() if line.startswith('image_source: error:')]
    assert len(errors) == 1, out
    assert params['path'] in errors[0]
    assert 'Traceback' not in out


def test_shipped_fastdds_profile_carries_every_vga_frame_to_a_best_effort_subscriber() -> None:
    # config/fastdds_shm.xml on the publisher only, as the README tells camera users; the
    # subscriber (this process) keeps LARGE_DATA. Without the profile most best-effort
    # 640x480 frames are lost on the way.
    domain, frames = new_domain_id(), 30
    params = {'source': 'synthetic', 'width': 640, 'height': 480, 'rate': 30.0, 'num_frames': frames,
              'wait_for_subscribers': 1, 'qos_reliability': 'best_effort'}
    cmd = ['env', '-u', 'FASTDDS_BUILTIN_TRANSPORTS', *python_module_command(MODULE, params)]
    profile = {'FASTDDS_DEFAULT_PROFILES_FILE': str(REPO_ROOT / 'config' / 'fastdds_shm.xml')}
    with RosHarness(domain) as ros:
        images = ros.record('camera/image_raw', Image, BEST_EFFORT)
        with RosProcess(cmd, domain, env_extra=profile) as proc:
            assert proc.wait(60) == 0, proc.output
    received = images.messages
    assert len(received) == frames, f'{len(received)} of {frames} frames arrived:\n{proc.output}'
    assert all(len(m.data) == 640 * 480 * 3 for m in received)


@pytest.mark.parametrize('python_flags', [(), ('-OO',)])  # -OO strips the docstrings help quotes
@pytest.mark.parametrize(('module', 'parameters'), [
    (MODULE, ('source', 'path', 'rate', 'encoding', 'wait_for_subscribers')),
    ('jetseg_ros.segmentation_node', ('profile', 'checkpoint', 'overlay_alpha', 'input_transport')),
])
def test_help_lists_the_parameters_and_starts_nothing(module: str, parameters: tuple[str, ...],
                                                      python_flags: tuple[str, ...]) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, *python_flags, '-m', module, '--help'], capture_output=True,
                          text=True, timeout=60, env=ros_env(new_domain_id()), cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('usage: ros2 run jetseg_ros')
    for name in parameters:
        assert f'\n  {name} (default ' in done.stdout
    assert 'publishing' not in done.stdout + done.stderr and 'ready' not in done.stdout + done.stderr


def test_sim_time_without_a_clock_publisher_is_reported_not_silent() -> None:
    params = {'use_sim_time': True, 'synthetic_scenes': 1}
    with RosProcess(python_module_command(MODULE, params), new_domain_id()) as proc:
        assert proc.wait_for_output('nothing publishes /clock', 30), proc.output
        assert 'Traceback' not in proc.output


def test_the_source_runs_under_python_OO() -> None:
    cmd = python_module_command(MODULE, {'num_frames': 2, 'synthetic_scenes': 1})
    with RosProcess([cmd[0], '-OO', *cmd[1:]], new_domain_id()) as proc:
        assert proc.wait(30) == 0, proc.output
    assert 'Traceback' not in proc.output
