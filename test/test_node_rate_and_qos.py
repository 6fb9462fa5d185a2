"""Scheduling and QoS of the segmentation node: a reliable subscription, a publisher faster than
inference (newest frame only, bounded age, counted drops), the QoS-mismatch warning, and SIGINT.

The node runs the untrained nano network at its full 360x480 input on one thread, and the camera
sends 60 Hz, so inference is clearly slower than the camera on this machine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
from ros_testing import (
    BEST_EFFORT,
    RELIABLE,
    RosHarness,
    RosProcess,
    new_domain_id,
    start_segmentation_node,
    wait_until_ready,
)
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from jetseg_core.data.synthetic import generate_scene
from jetseg_ros.image_conversion import rgb_to_image

NODE = '/jetseg'


@dataclass
class Session:
    node: RosProcess
    harness: RosHarness
    best_effort_pub: object


@pytest.fixture(scope='module')
def session():
    domain = new_domain_id()
    node = start_segmentation_node(domain, {'checkpoint': 'untrained', 'qos_reliability': 'reliable',
                                            'num_threads': 1})
    harness = RosHarness(domain)
    try:
        # Exists before the node's no-image check fires (5 s after start-up): it must be named there.
        best_effort_pub = harness.publisher('/image', Image, BEST_EFFORT)
        wait_until_ready(node)
        yield Session(node, harness, best_effort_pub)
    finally:
        node.stop()
        harness.close()


def test_qos_mismatch_is_reported_with_the_publishers_qos(session):
    frame = rgb_to_image(generate_scene(1, (48, 64))[0], 'rgb8')
    deadline = time.monotonic() + 60
    while not session.node.wait_for_output('no image received on /image', 0.5):
        assert time.monotonic() < deadline, session.node.output
        session.best_effort_pub.publish(frame)  # never delivered: best effort -> reliable does not match
    line = next(li for li in session.node.output.splitlines() if 'no image received' in li)
    assert 'WARN' in line and 'best_effort' in line and 'qos_reliability:=best_effort' in line
    assert session.node.wait_for_output('QoS incompatible', 10) or 'incompatible' in session.node.output
    session.harness.node.destroy_publisher(session.best_effort_pub)


def test_fast_reliable_camera_keeps_output_age_bounded_and_counts_drops(session):
    from jetseg_ros.msg import SegmentationLatency

    harness = session.harness
    pub = harness.publisher('/image', Image, RELIABLE)
    latency = harness.record(f'{NODE}/latency', SegmentationLatency)
    labels = harness.record(f'{NODE}/labels', Image)
    overlay = harness.record(f'{NODE}/overlay', Image)  # a subscriber: the overlay is rendered too
    assert harness.wait_for_subscribers(pub, 1, 60)
    assert harness.wait_for_publishers(f'{NODE}/latency', 1, 60)

    msg = rgb_to_image(generate_scene(2, (480, 640))[0], 'rgb8')
    rate_hz, seconds = 60.0, 3.0
    start = time.monotonic()
    sent = 0
    while sent < rate_hz * seconds:
        msg.header = Header(stamp=harness.now(), frame_id=f'fast_{sent}')
        pub.publish(msg)
        sent += 1
        time.sleep(max(0.0, start + sent / rate_hz - time.monotonic()))
    elapsed = time.monotonic() - start
    # the newest is never dropped
    last = latency.wait_for(lambda m: m.header.frame_id == f'fast_{sent - 1}', 60)
    reports = latency.messages

    assert elapsed < seconds * 1.5, f'the test could not publish at {rate_hz:g} Hz'
    assert last.frames_in >= sent * 0.5
    assert last.frames_dropped > 0 and last.frames_processed < last.frames_in
    assert last.frames_in == last.frames_processed + last.frames_dropped + last.frames_rejected
    work_ms = np.median([r.preprocess_ms + r.inference_ms + r.postprocess_ms for r in reports])
    assert work_ms > 1000.0 / rate_hz, 'inference was not slower than the camera: nothing was tested'
    ages = [r.total_ms for r in reports]
    print(f'\nfast camera: sent {sent}, received {last.frames_in}, processed {last.frames_processed}, '
          f'dropped {last.frames_dropped}; work p50 {work_ms:.0f} ms; age p50 {np.median(ages):.0f} ms, '
          f'max {max(ages):.0f} ms')
    # Newest-frame-only: a frame waits at most for the one in hand, so age stays near two frame times.
    # A queue would grow to (frames sent - frames processed) * work_ms, seconds here.
    assert max(ages) < 5 * work_ms + 1500, (max(ages), work_ms)
    assert ages[-1] < 5 * work_ms + 1500
    assert labels.wait_for(lambda m: m.header.frame_id == last.header.frame_id, 30).width == 640
    assert overlay.wait_for(lambda m: m.header.frame_id == last.header.frame_id, 30).height == 480


def test_sigint_stops_the_node_cleanly(session):
    rc = session.node.stop(timeout=30)
    assert rc == 0, session.node.output
    assert 'Traceback' not in session.node.output
