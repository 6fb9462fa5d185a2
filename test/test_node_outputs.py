"""The segmentation node over real DDS: outputs for every encoding, headers, camera_info, class legend,
run-time parameters, sim time, frame age limits, diagnostics and malformed input.

One node process (tiny random-init checkpoint, best-effort image subscription) serves the
whole module; this test process publishes images and records the outputs.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from ros_testing import (
    BEST_EFFORT,
    LATCHED,
    RosHarness,
    RosProcess,
    TopicRecorder,
    new_domain_id,
    start_segmentation_node,
    wait_until_ready,
)
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from jetseg_core.backends import resolve_backend
from jetseg_core.data.synthetic import generate_scene
from jetseg_core.inference import nearest_resize
from jetseg_core.palettes import CAMVID11
from jetseg_core.visualize import blend
from jetseg_ros.image_conversion import SUPPORTED_ENCODINGS, image_to_rgb, rgb_to_image

NODE = '/jetseg'
SIZE = (120, 160)  # (H, W): not the network's 96x128, so outputs must be resized back to the input
NETWORK = (96, 128)


@dataclass
class Session:
    node: RosProcess
    harness: RosHarness
    image_pub: object
    info_pub: object
    labels: TopicRecorder
    color: TopicRecorder
    overlay: TopicRecorder
    camera_info: TopicRecorder
    latency: TopicRecorder
    diagnostics: TopicRecorder


@pytest.fixture(scope='module')
def session(tiny_checkpoint):
    from jetseg_ros.msg import SegmentationLatency

    domain = new_domain_id()
    node = start_segmentation_node(domain, {'checkpoint': str(tiny_checkpoint), 'num_threads': 1})
    harness = RosHarness(domain)
    try:
        s = Session(
            node=node, harness=harness,
            image_pub=harness.publisher('/image', Image, BEST_EFFORT),
            info_pub=harness.publisher('/camera_info', CameraInfo),
            labels=harness.record(f'{NODE}/labels', Image),
            color=harness.record(f'{NODE}/color_mask', Image),
            overlay=harness.record(f'{NODE}/overlay', Image),
            camera_info=harness.record(f'{NODE}/camera_info', CameraInfo),
            latency=harness.record(f'{NODE}/latency', SegmentationLatency),
            diagnostics=harness.record('/diagnostics', DiagnosticArray),
        )
        wait_until_ready(node)
        assert harness.wait_for_subscribers(s.image_pub, 1, 60), 'node never subscribed to /image'
        for topic in ('labels', 'color_mask', 'overlay', 'latency'):
            assert harness.wait_for_publishers(f'{NODE}/{topic}', 1, 60)
        yield s
    finally:
        node.stop()
        harness.close()


@pytest.fixture(scope='module')
def local_segmenter(tiny_checkpoint):
    """The same network in this process: the node's labels must match what it computes."""
    import torch

    from jetseg_core.inference import Segmenter

    torch.set_num_threads(1)
    return Segmenter.from_checkpoint(str(tiny_checkpoint), profile='nano')


_frame_counter = iter(range(1, 1_000_000))


def _header(s: Session, frame_id: str, stamp: tuple[int, int] | None = None) -> Header:
    header = Header(frame_id=f'{frame_id}_{next(_frame_counter)}')  # unique: outputs are matched on it
    if stamp is None:
        header.stamp = s.harness.now()
    else:
        header.stamp.sec, header.stamp.nanosec = stamp
    return header


def _same_header(header: Header):
    key = (header.stamp.sec, header.stamp.nanosec, header.frame_id)
    return lambda m: (m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id) == key


def _send(s: Session, msg, wait_for=('labels', 'color', 'overlay', 'latency'), timeout: float = 60.0,
          also=None) -> dict:
    """Publish ``msg`` (again every 2 s: best effort, newest-frame-only) until its labels come back;
    then collect the other outputs carrying its header."""
    match = _same_header(msg.header)
    deadline = time.monotonic() + timeout
    while True:
        if also is not None:
            also()
        s.image_pub.publish(msg)
        try:
            first = getattr(s, wait_for[0]).wait_for(match, 2.0)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    out = {wait_for[0]: first}
    for name in wait_for[1:]:
        out[name] = getattr(s, name).wait_for(match, 20.0)
    return out


def _pixels(msg: Image) -> np.ndarray:
    channels = {'mono8': 1, 'rgb8': 3}[msg.encoding]
    assert msg.step == msg.width * channels
    data = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, channels)
    return data[..., 0] if channels == 1 else data


def _scene(seed: int = 3, size: tuple[int, int] = SIZE) -> np.ndarray:
    return generate_scene(seed, size)[0]


def _status(array: DiagnosticArray) -> DiagnosticStatus:
    assert len(array.status) == 1
    return array.status[0]


@pytest.mark.parametrize('encoding', SUPPORTED_ENCODINGS)
def test_every_encoding_is_segmented_at_input_size_with_the_input_header(session, local_segmenter, encoding):
    msg = rgb_to_image(_scene(), encoding, _header(session, f'cam_{encoding}'),
                       row_padding=0 if encoding in ('yuv422', 'uyvy', 'yuyv', 'yuv422_yuy2') else 6,
                       bigendian=encoding == 'mono16')
    out = _send(session, msg)
    for name, encoding_out in (('labels', 'mono8'), ('color', 'rgb8'), ('overlay', 'rgb8')):
        image = out[name]
        assert (image.height, image.width, image.encoding) == (*SIZE, encoding_out), name
        assert image.header.frame_id == msg.header.frame_id and image.header.stamp == msg.header.stamp
    assert out['latency'].header.frame_id == msg.header.frame_id

    rgb = image_to_rgb(msg)
    labels = _pixels(out['labels'])
    expected = local_segmenter.segment(rgb).labels
    assert (labels == expected).mean() > 0.99  # the node saw the same RGB picture (channel order, padding)
    color = _pixels(out['color'])
    np.testing.assert_array_equal(color, CAMVID11.colors[labels])
    np.testing.assert_array_equal(_pixels(out['overlay']), blend(rgb, color, 0.5))


def test_camera_info_is_republished_with_the_image_header_and_scaled_at_network_size(session):
    info = CameraInfo(height=SIZE[0], width=SIZE[1], distortion_model='plumb_bob')
    info.header.frame_id = 'camera_optical'
    info.k = [200.0, 0.0, 80.0, 0.0, 210.0, 60.0, 0.0, 0.0, 1.0]
    info.p = [200.0, 0.0, 80.0, -20.0, 0.0, 210.0, 60.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.d = [0.1, -0.05, 0.0, 0.0, 0.0]

    def send_info() -> None:
        session.info_pub.publish(info)

    msg = rgb_to_image(_scene(4), 'rgb8', _header(session, 'cam_info'))
    out = _send(session, msg, wait_for=('camera_info', 'labels'), also=send_info)
    republished = out['camera_info']
    assert republished.header.stamp == msg.header.stamp and republished.header.frame_id == msg.header.frame_id
    assert (republished.height, republished.width) == SIZE
    assert list(republished.k) == list(info.k) and list(republished.d) == list(info.d)

    results = session.harness.set_parameters(NODE, {'output_resolution': 'network'})
    assert results[0].successful, results[0].reason
    try:
        msg = rgb_to_image(_scene(5), 'bgr8', _header(session, 'cam_network'))
        out = _send(session, msg, wait_for=('camera_info', 'labels', 'color', 'overlay'), also=send_info)
        for name in ('labels', 'color', 'overlay'):
            assert (out[name].height, out[name].width) == NETWORK, name
        base = nearest_resize(_scene(5), NETWORK)  # the input, at network size like the mask
        np.testing.assert_array_equal(_pixels(out['overlay']), blend(base, _pixels(out['color']), 0.5))
        scaled = out['camera_info']
        sx, sy = NETWORK[1] / SIZE[1], NETWORK[0] / SIZE[0]
        assert (scaled.height, scaled.width) == NETWORK
        assert scaled.k[0] == pytest.approx(200 * sx) and scaled.k[2] == pytest.approx(80 * sx)
        assert scaled.k[4] == pytest.approx(210 * sy) and scaled.k[5] == pytest.approx(60 * sy)
        assert scaled.p[3] == pytest.approx(-20 * sx)
    finally:
        session.harness.set_parameters(NODE, {'output_resolution': 'input'})


def test_overlay_alpha_changes_at_run_time_and_invalid_changes_are_refused(session):
    rgb = _scene(6)
    try:
        assert session.harness.set_parameters(NODE, {'overlay_alpha': 0.0})[0].successful
        out = _send(session, rgb_to_image(rgb, 'rgb8', _header(session, 'alpha0')))
        np.testing.assert_array_equal(_pixels(out['overlay']), rgb)

        assert session.harness.set_parameters(NODE, {'overlay_alpha': 1})[0].successful  # an int is fine
        out = _send(session, rgb_to_image(rgb, 'rgb8', _header(session, 'alpha1')))
        np.testing.assert_array_equal(_pixels(out['overlay']), _pixels(out['color']))

        refused = session.harness.set_parameters(NODE, {'overlay_alpha': 1.5})[0]
        assert not refused.successful and 'range' in refused.reason
        refused = session.harness.set_parameters(NODE, {'overlay_alpha': 'opaque'})[0]
        assert not refused.successful and refused.reason
        refused = session.harness.set_parameters(NODE, {'profile': 'agx'})[0]
        assert not refused.successful and 'read-only' in refused.reason
        refused = session.harness.set_parameters(NODE, {'output_resolution': 'huge'})[0]
        assert not refused.successful and 'network' in refused.reason
        assert session.harness.get_parameters(NODE, ['overlay_alpha', 'profile']) == [1.0, 'nano']
    finally:
        session.harness.set_parameters(NODE, {'overlay_alpha': 0.5})


def test_disabled_overlay_is_not_published(session):
    assert session.harness.set_parameters(NODE, {'publish_overlay': False})[0].successful
    try:
        first = rgb_to_image(_scene(7), 'rgb8', _header(session, 'no_overlay'))
        _send(session, first, wait_for=('labels', 'color', 'latency'))
        second = rgb_to_image(_scene(8), 'rgb8', _header(session, 'no_overlay'))
        _send(session, second, wait_for=('labels', 'color', 'latency'))
        assert not any(_same_header(first.header)(m) or _same_header(second.header)(m)
                       for m in session.overlay.messages)
    finally:
        session.harness.set_parameters(NODE, {'publish_overlay': True})


def test_class_legend_reaches_a_late_subscriber(session):
    from jetseg_ros.msg import ClassInfo

    late = session.harness.record(f'{NODE}/class_info', ClassInfo, LATCHED)
    legend = late.wait_for_count(1, 30)[0]
    assert list(legend.class_ids) == list(range(11))
    assert list(legend.class_names) == list(CAMVID11.class_names)
    colors = np.array([[c.r, c.g, c.b] for c in legend.class_colors]) * 255
    np.testing.assert_allclose(colors, CAMVID11.colors, atol=1e-3)
    assert legend.profile == 'nano'


def test_diagnostics_report_rates_latency_and_setup(session):
    _send(session, rgb_to_image(_scene(9), 'rgb8', _header(session, 'diag')))
    array = session.diagnostics.wait_for(lambda a: _values(a).get('frames processed', '0') != '0', 30)
    status = _status(array)
    assert 'jetseg' in status.name
    values = _values(array)
    for key in ('input rate (Hz)', 'output rate (Hz)', 'latency p50 (ms)', 'latency p95 (ms)',
                'frames dropped', 'frames rejected', 'last error', 'profile', 'device', 'backend'):
        assert key in values, key
    auto = resolve_backend('auto', 'cpu')[0]  # the node's default backend: the best one installed
    assert values['profile'] == 'nano' and values['device'] == 'cpu' and values['backend'].startswith(auto)
    assert float(values['latency p50 (ms)']) > 0


def _values(array: DiagnosticArray) -> dict[str, str]:
    return {kv.key: kv.value for st in array.status for kv in st.values}


def _malformed(s: Session) -> list[tuple[Image, str]]:
    good = rgb_to_image(_scene(10, (8, 10)), 'rgb8', _header(s, 'bad'))
    cases = []

    def variant(problem: str, **fields) -> None:
        msg = rgb_to_image(_scene(10, (8, 10)), fields.pop('encoding_src', 'rgb8'), _header(s, 'bad'))
        for key, value in fields.items():
            setattr(msg, key, value)
        cases.append((msg, problem))

    variant("unsupported encoding '32FC1'", encoding='32FC1', step=40)
    variant('data length 239 != step*height', data=bytes(good.data)[:-1])
    variant('empty image (0x0)', height=0, width=0, step=0, data=b'')
    variant('step 20 is smaller than width*bytes per pixel', step=20, height=12, data=b'\0' * 240)
    odd = rgb_to_image(_scene(10, (8, 10)), 'yuyv', _header(s, 'bad'))
    odd.width, odd.step, odd.data = 9, 18, bytes(odd.data)[:144]
    cases.append((odd, 'odd width 9 for yuyv'))
    return cases


def test_malformed_frames_are_rejected_while_the_node_keeps_serving(session):
    latest = session.latency.messages[-1].frames_rejected if session.latency.count else 0
    for bad, problem in _malformed(session):
        deadline = time.monotonic() + 60
        while not session.node.wait_for_output(problem, 1.0):  # one throttled error line naming the problem
            assert time.monotonic() < deadline, f'no log line about {problem!r}:\n{session.node.output}'
            session.image_pub.publish(bad)
        error = session.diagnostics.wait_for(
            lambda a, text=problem: (_status(a).level == DiagnosticStatus.ERROR
                                     and text in _status(a).message), 30)
        assert problem in _values(error)['last error']
        out = _send(session, rgb_to_image(_scene(11), 'rgb8', _header(session, 'good_again')))
        assert out['latency'].frames_rejected > latest
        latest = out['latency'].frames_rejected
    # Healthy again once good frames flow.
    session.diagnostics.clear()
    _send(session, rgb_to_image(_scene(12), 'rgb8', _header(session, 'healthy')))
    recovered = session.diagnostics.wait_for(lambda a: _status(a).level == DiagnosticStatus.OK, 30)
    assert 'Traceback' not in session.node.output
    assert session.node.running, recovered


def test_a_stream_of_bad_frames_logs_one_line_per_kind_of_problem(session):
    # Each frame is short by a different number of bytes: one kind of problem, one line per 5 s.
    lines_before = session.node.output.count('data length')
    good = rgb_to_image(_scene(13, (8, 10)), 'rgb8', _header(session, 'short'))
    rejected_before = _send(session, rgb_to_image(_scene(13), 'rgb8', _header(session, 'before')))[
        'latency'].frames_rejected
    for missing in range(1, 7):
        bad = rgb_to_image(_scene(13, (8, 10)), 'rgb8', _header(session, 'short'))
        bad.data = bytes(good.data)[:-missing]
        session.image_pub.publish(bad)
        time.sleep(0.2)  # one at a time, so that none is replaced unseen in the newest-frame slot
    out = _send(session, rgb_to_image(_scene(13), 'rgb8', _header(session, 'after')))
    assert out['latency'].frames_rejected - rejected_before >= 4
    assert session.node.output.count('data length') - lines_before <= 1, session.node.output


def test_sim_time_is_used_for_ages_and_max_frame_age_drops_old_frames(session):
    sim_sec = 1_000_000
    stop = threading.Event()
    clock_pub = session.harness.publisher('/clock', Clock)

    def tick() -> None:
        while not stop.is_set():
            msg = Clock()
            msg.clock.sec = sim_sec
            clock_pub.publish(msg)
            stop.wait(0.05)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        assert session.harness.set_parameters(NODE, {'use_sim_time': True})[0].successful
        # The node's clock (diagnostics stamp) now reads the simulated time.
        session.diagnostics.wait_for(lambda a: a.header.stamp.sec == sim_sec, 30)

        out = _send(session, rgb_to_image(_scene(13), 'rgb8',
                                          _header(session, 'sim', (sim_sec - 1, 750_000_000))))
        assert out['latency'].age_at_receipt_ms == pytest.approx(250.0, abs=1e-3)
        assert out['latency'].total_ms == pytest.approx(250.0, abs=1e-3)

        assert session.harness.set_parameters(NODE, {'max_frame_age_ms': 100})[0].successful
        dropped_before = out['latency'].frames_dropped
        old = rgb_to_image(_scene(13), 'rgb8', _header(session, 'too_old', (sim_sec - 1, 750_000_000)))
        deadline = time.monotonic() + 60
        while not session.node.wait_for_output('max_frame_age_ms (100 ms)', 1.0):
            assert time.monotonic() < deadline, session.node.output
            session.image_pub.publish(old)
        fresh = _send(session, rgb_to_image(_scene(13), 'rgb8',
                                            _header(session, 'fresh', (sim_sec - 1, 950_000_000))))
        assert fresh['latency'].total_ms == pytest.approx(50.0, abs=1e-3)
        assert fresh['latency'].frames_dropped > dropped_before
        assert not any(_same_header(old.header)(m) for m in session.labels.messages)
    finally:
        session.harness.set_parameters(NODE, {'max_frame_age_ms': 0, 'use_sim_time': False})
        stop.set()
        thread.join(5)
