"""The node's read-only `backend` parameter: the engine it names runs, and is named in the start-up
line and /diagnostics; a backend that cannot run here is one error line and exit 2.

Real nodes in separate processes over real DDS, with the engine cache in a fresh folder.
"""
from __future__ import annotations

import os
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from ros_testing import (
    BEST_EFFORT,
    RosHarness,
    new_domain_id,
    start_segmentation_node,
    wait_until_ready,
)
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from jetseg_core.backends import ENGINES, backend_available
from jetseg_core.data.synthetic import generate_scene
from jetseg_ros.image_conversion import rgb_to_image

UNAVAILABLE = next((name for name in ENGINES if not backend_available(name)), None)
needs_onnxruntime = pytest.mark.skipif(not backend_available('onnxruntime'),
                                       reason='onnxruntime not installed')


@pytest.fixture(scope='module')
def processes(tiny_checkpoint, tmp_path_factory):
    """Every node of this module starts at once (they mostly wait on imports)."""
    cache = tmp_path_factory.mktemp('xdg_cache')
    before = os.environ.get('XDG_CACHE_HOME')
    os.environ['XDG_CACHE_HOME'] = str(cache)  # the children inherit it (ros_env copies os.environ)
    procs = {'domain': new_domain_id(), 'cache': cache}
    try:
        if backend_available('onnxruntime'):
            params = {'checkpoint': str(tiny_checkpoint), 'backend': 'onnxruntime', 'num_threads': 1}
            procs['onnxruntime'] = start_segmentation_node(procs['domain'], params)
        if UNAVAILABLE:
            procs['unavailable'] = start_segmentation_node(
                new_domain_id(), {'checkpoint': str(tiny_checkpoint), 'backend': UNAVAILABLE})
        procs['unknown'] = start_segmentation_node(
            new_domain_id(), {'checkpoint': str(tiny_checkpoint), 'backend': 'tflite'})
    finally:
        if before is None:
            os.environ.pop('XDG_CACHE_HOME', None)
        else:
            os.environ['XDG_CACHE_HOME'] = before
    yield procs
    for name, proc in procs.items():
        if name not in ('domain', 'cache'):
            proc.stop()


def _values(array: DiagnosticArray) -> dict[str, str]:
    return {kv.key: kv.value for st in array.status for kv in st.values}


@needs_onnxruntime
def test_node_runs_onnxruntime_and_names_it_at_start_up_and_in_diagnostics(processes):
    node = processes['onnxruntime']
    wait_until_ready(node, 180)
    ready = next(line for line in node.output.splitlines() if 'ready:' in line)
    assert 'backend onnxruntime-fp32' in ready, node.output
    assert 'exported the network to ONNX in' in node.output  # the build is logged with its duration
    assert any(p.suffix == '.onnx' for p in (processes['cache'] / 'jetseg').iterdir())
    with RosHarness(processes['domain']) as harness:
        pub = harness.publisher('/image', Image, BEST_EFFORT)
        labels = harness.record('/jetseg/labels', Image)
        diagnostics = harness.record('/diagnostics', DiagnosticArray)
        assert harness.wait_for_subscribers(pub, 1, 60)
        msg = rgb_to_image(generate_scene(3, (96, 128))[0], 'rgb8', Header(frame_id='engine'))
        deadline = time.monotonic() + 60
        while not labels.messages:
            assert time.monotonic() < deadline, node.output
            pub.publish(msg)
            time.sleep(0.5)
        out = labels.messages[0]
        assert (out.height, out.width) == (96, 128)
        array = diagnostics.wait_for(lambda a: _values(a).get('frames processed', '0') != '0', 30)
    values = _values(array)
    assert values['backend'] == 'onnxruntime-fp32' and values['device'] == 'cpu'
    assert values['inference threads'].startswith('1')


@pytest.mark.skipif(UNAVAILABLE is None, reason='every engine is installed and usable here')
def test_backend_that_cannot_run_here_is_one_error_line_and_exit_2(processes):
    proc = processes['unavailable']
    assert proc.wait(120) == 2, proc.output
    errors = [line for line in proc.output.splitlines() if '[ERROR]' in line]
    assert len(errors) == 1 and f"backend '{UNAVAILABLE}'" in errors[0], proc.output
    assert 'Traceback' not in proc.output


def test_unknown_backend_is_one_error_line_and_exit_2(processes):
    proc = processes['unknown']
    assert proc.wait(120) == 2, proc.output
    errors = [line for line in proc.output.splitlines() if '[ERROR]' in line]
    assert len(errors) == 1 and "parameter 'backend' cannot be 'tflite'" in errors[0], proc.output
    assert 'onnxruntime' in errors[0] and 'Traceback' not in proc.output
