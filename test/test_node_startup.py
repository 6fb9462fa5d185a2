"""Start-up errors of the segmentation node, compressed input with a remapped camera topic, SIGINT,
and the profile's run-time defaults for a node started without a parameters file.

All processes of this module start at once (they mostly wait on imports), then each test
inspects its own.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray
from ros_testing import (
    BEST_EFFORT,
    RosHarness,
    new_domain_id,
    start_segmentation_node,
    wait_until_ready,
)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from jetseg_core.data.synthetic import generate_scene
from jetseg_core.palettes import CAMVID11
from jetseg_core.profiles import one_per_core
from jetseg_core.visualize import blend
from jetseg_ros.image_conversion import rgb_to_compressed, rgb_to_image

# name -> (parameters, words the one error line must contain)
BAD_STARTS = {
    'unknown_profile': ({'profile': 'huge'},
                        ["parameter 'profile' cannot be 'huge'", 'nano, agx, workstation']),
    'missing_checkpoint': ({'checkpoint': '/nonexistent/model.safetensors'},
                           ['cannot load checkpoint', '/nonexistent/model.safetensors']),
    'corrupt_checkpoint': ({'checkpoint': '{corrupt}'}, ['cannot load checkpoint', 'corrupt.safetensors']),
    'alpha_out_of_range': ({'overlay_alpha': 1.5}, ["parameter 'overlay_alpha' cannot be 1.5", '0..1']),
    'depth_not_an_integer': ({'qos_depth': 'deep'}, ["parameter 'qos_depth' must be an integer"]),
    'unknown_transport': ({'input_transport': 'theora'}, ["parameter 'input_transport' cannot be 'theora'"]),
    'fp16_on_cpu': ({'device': 'cpu', 'precision': 'fp16'}, ['fp16', 'CUDA']),
}


@pytest.fixture(scope='module')
def processes(tiny_checkpoint, tmp_path_factory):
    corrupt = tmp_path_factory.mktemp('corrupt') / 'corrupt.safetensors'
    corrupt.write_bytes(tiny_checkpoint.read_bytes()[:2000])  # truncated: header promises more
    procs = {}
    domain = new_domain_id()
    for name, (params, _) in BAD_STARTS.items():
        params = {k: (str(corrupt) if v == '{corrupt}' else v) for k, v in params.items()}
        params.setdefault('checkpoint', str(tiny_checkpoint))
        procs[name] = start_segmentation_node(new_domain_id(), params)
    procs['compressed'] = start_segmentation_node(
        domain, {'checkpoint': str(tiny_checkpoint), 'input_transport': 'compressed', 'num_threads': 1},
        remaps={'image': '/camera/image_raw'}, name='segmenter')
    procs['domain'] = domain
    # As `ros2 run` starts it: no parameters file, nothing but the (tiny, fast) weights.
    procs['bare_domain'] = new_domain_id()
    procs['bare'] = start_segmentation_node(procs['bare_domain'], {'checkpoint': str(tiny_checkpoint)})
    yield procs
    for name, proc in procs.items():
        if not name.endswith('domain'):
            proc.stop()


@pytest.mark.parametrize('case', BAD_STARTS)
def test_bad_start_up_exits_2_with_one_clear_line(processes, case):
    proc = processes[case]
    rc = proc.wait(120)
    lines = [li for li in proc.output.splitlines() if li.strip()]
    assert rc == 2, proc.output
    assert 'Traceback' not in proc.output
    errors = [li for li in lines if '[ERROR]' in li]
    assert len(errors) == 1, proc.output
    for words in BAD_STARTS[case][1]:
        assert words in errors[0], proc.output
    assert len(lines) <= 2, proc.output  # the error, at most one unrelated library warning


def test_compressed_input_on_a_remapped_topic_is_segmented(processes):
    node = processes['compressed']
    wait_until_ready(node)
    assert '/camera/image_raw/compressed' in node.output
    with RosHarness(processes['domain']) as harness:
        pub = harness.publisher('/camera/image_raw/compressed', CompressedImage, BEST_EFFORT)
        labels = harness.record('/segmenter/labels', Image)
        overlay = harness.record('/segmenter/overlay', Image)
        assert harness.wait_for_subscribers(pub, 1, 60)

        def send(msg, timeout: float = 60.0) -> Image:
            deadline = time.monotonic() + timeout
            while True:
                pub.publish(msg)
                try:
                    return labels.wait_for(lambda m: m.header.frame_id == msg.header.frame_id, 2.0)
                except AssertionError:
                    assert time.monotonic() < deadline, node.output

        rgb = generate_scene(5, (90, 120))[0]
        for fmt in ('jpeg', 'png'):
            header = Header(stamp=harness.now(), frame_id=f'compressed_{fmt}')
            out = send(rgb_to_compressed(rgb, fmt, header))
            assert (out.height, out.width, out.encoding) == (90, 120, 'mono8')
            assert out.header.stamp == header.stamp
            blended = overlay.wait_for(lambda m, f=header.frame_id: m.header.frame_id == f, 20)
            assert (blended.height, blended.width, blended.encoding) == (90, 120, 'rgb8')
            if fmt == 'png':  # lossless: the overlay is built from exactly this picture
                ids = np.frombuffer(out.data, np.uint8).reshape(90, 120)
                pixels = np.frombuffer(blended.data, np.uint8).reshape(90, 120, 3)
                np.testing.assert_array_equal(pixels, blend(rgb, CAMVID11.colors[ids], 0.5))

        garbage = CompressedImage(format='jpeg', header=Header(frame_id='garbage'))
        garbage.data = b'\xff\xd8 this is not a jpeg'
        deadline = time.monotonic() + 60
        while not node.wait_for_output('cannot decode compressed image', 1.0):
            assert time.monotonic() < deadline, node.output
            pub.publish(garbage)
        again = send(rgb_to_compressed(rgb, 'jpeg', Header(stamp=harness.now(), frame_id='after_garbage')))
        assert again.width == 120


def _diagnostic_values(array: DiagnosticArray) -> dict[str, str]:
    return {kv.key: kv.value for status in array.status for kv in status.values}


def _nano_defaults() -> tuple[str, str]:
    """'inference threads' and 'precision' of a nano node with device auto, as /diagnostics shows them."""
    if torch.cuda.is_available():
        return f'{one_per_core()} (nano default)', 'fp16 (auto)'
    return '1 (nano default)', 'fp32 (auto)'


def test_node_without_parameters_file_runs_the_profile_thread_count_and_precision(processes):
    node = processes['bare']
    wait_until_ready(node)
    threads, precision = _nano_defaults()
    assert f'threads {threads}, precision {precision}' in node.output
    with RosHarness(processes['bare_domain']) as harness:
        diagnostics = harness.record('/diagnostics', DiagnosticArray)
        values = _diagnostic_values(diagnostics.wait_for(lambda a: True, 30))
        assert (values['inference threads'], values['precision']) == (threads, precision)
        assert harness.get_parameters('/jetseg', ['num_threads', 'precision']) == [0, 'auto']


def test_num_threads_set_back_to_0_at_run_time_runs_the_profile_thread_count(processes):
    node = processes['bare']
    wait_until_ready(node)
    with RosHarness(processes['bare_domain']) as harness:
        pub = harness.publisher('/image', Image, BEST_EFFORT)
        labels = harness.record('/jetseg/labels', Image)
        diagnostics = harness.record('/diagnostics', DiagnosticArray)
        assert harness.wait_for_subscribers(pub, 1, 60)
        rgb = generate_scene(6, (48, 64))[0]

        def threads_after_setting(value: int) -> str:
            assert harness.set_parameters('/jetseg', {'num_threads': value})[0].successful
            frame_id = f'threads_{value}'
            deadline = time.monotonic() + 60
            while True:  # the worker applies the change with its next frame
                pub.publish(rgb_to_image(rgb, 'rgb8', Header(stamp=harness.now(), frame_id=frame_id)))
                try:
                    labels.wait_for(lambda m: m.header.frame_id == frame_id, 2.0)
                    break
                except AssertionError:
                    assert time.monotonic() < deadline, node.output
            diagnostics.clear()
            return _diagnostic_values(diagnostics.wait_for(lambda a: True, 30))['inference threads']

        assert threads_after_setting(2) == '2 (requested)'
        assert threads_after_setting(0) == _nano_defaults()[0]


def test_sigint_exits_0_without_traceback(processes):
    node = processes['compressed']
    wait_until_ready(node)
    assert node.stop(timeout=30) == 0, node.output
    assert 'Traceback' not in node.output
