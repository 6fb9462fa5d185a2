"""Ctrl-C as users give it: under `ros2 launch` each process gets SIGINT twice, once from the
terminal (the process group) and once forwarded by launch. Both our executables must exit 0,
with no traceback, whenever the two arrive: at once, during shutdown, or while the model loads.
"""
from __future__ import annotations

import signal
import time

import pytest
from ros_testing import (
    RosHarness,
    RosProcess,
    new_domain_id,
    python_module_command,
    start_segmentation_node,
    wait_until,
    wait_until_ready,
)


def ctrl_c_under_launch(proc: RosProcess, gap_s: float) -> int | None:
    proc.proc.send_signal(signal.SIGINT)
    time.sleep(gap_s)
    if proc.proc.poll() is None:
        proc.proc.send_signal(signal.SIGINT)
    return proc.wait(20)


def assert_clean_exit(rc: int | None, proc: RosProcess) -> None:
    assert rc == 0, f'exit code {rc}:\n{proc.output}'
    assert 'Traceback' not in proc.output and 'KeyboardInterrupt' not in proc.output, proc.output


@pytest.mark.parametrize('gap_s', [0.0, 0.05, 0.3])
def test_node_exits_cleanly_on_a_double_sigint(gap_s):
    node = start_segmentation_node(new_domain_id(), {'checkpoint': 'untrained'})
    try:
        wait_until_ready(node)
        assert_clean_exit(ctrl_c_under_launch(node, gap_s), node)
    finally:
        node.stop()


def test_node_interrupted_while_loading_exits_at_once():
    domain = new_domain_id()
    # The workstation network takes several seconds to load and trace: a Ctrl-C lands inside that.
    node = start_segmentation_node(domain, {'profile': 'workstation', 'checkpoint': 'untrained'})
    try:
        with RosHarness(domain) as harness:
            # The node joins the graph before it loads the model.
            assert wait_until(lambda: 'jetseg' in harness.node.get_node_names(), 60), node.output
        started = time.monotonic()
        rc = ctrl_c_under_launch(node, 0.05)
        assert 'ready:' not in node.output, 'the model loaded before the Ctrl-C: nothing was tested'
        assert_clean_exit(rc, node)
        assert time.monotonic() - started < 5.0, 'waited for the model to finish loading'
    finally:
        node.stop()


@pytest.mark.parametrize('gap_s', [0.0, 0.3])
def test_image_source_exits_cleanly_on_a_double_sigint(gap_s):
    source = RosProcess(python_module_command('jetseg_ros.image_source', {
        'source': 'synthetic', 'width': 320, 'height': 240, 'rate': 15.0}), new_domain_id())
    try:
        assert source.wait_for_output('publishing synthetic frames', 60), source.output
        assert_clean_exit(ctrl_c_under_launch(source, gap_s), source)
    finally:
        source.stop()
