"""Ctrl-C in the terminal of `ros2 launch jetseg_ros nano.launch.py source:=synthetic`: the terminal
sends SIGINT to the whole process group and launch forwards one more to each process. Both
processes must still finish cleanly (exit 0, no traceback).

ros2 launch itself rarely exits 1 (once in CI, in none of 43 tries here) with "Task was destroyed
but it is pending" from its own launch_service.py: launch keeps Python's KeyboardInterrupt on
SIGINT, and one landing inside its asyncio loop can lose the wake-up of its event task. That is
upstream; both our processes had finished cleanly.
That one launch-internal failure is tolerated; any other non-zero exit fails the test.
"""
from __future__ import annotations

import os
import signal

import pytest
from ros_testing import REPO_ROOT, RosProcess, checkout_pythonpath, new_domain_id, ros2_cli

pytest.importorskip('launch_ros', reason='launch_ros is not installed (ROS 2, or shared/ros-launch)')
ROS2 = ros2_cli()
if ROS2 is None:
    pytest.skip('the ros2 command is not installed (ROS 2, or shared/ros-launch)', allow_module_level=True)


def test_ctrl_c_in_the_terminal_stops_the_pipeline_cleanly():
    cmd = [str(ROS2), 'launch', str(REPO_ROOT / 'launch' / 'nano.launch.py'), 'source:=synthetic',
           'checkpoint:=untrained', 'rate:=15.0']
    launch = RosProcess(cmd, new_domain_id(), env_extra={'PYTHONPATH': checkout_pythonpath()})
    try:
        assert launch.wait_for_output('ready:', 120), launch.output
        assert launch.wait_for_output('publishing synthetic frames', 30), launch.output
        os.killpg(launch.proc.pid, signal.SIGINT)  # RosProcess starts a session: this is its group
        rc = launch.wait(60)
        out = launch.output
        launch_lost_a_task = rc == 1 and 'Task was destroyed but it is pending' in out \
            and 'launch_service.py' in out
        assert rc == 0 or launch_lost_a_task, f'ros2 launch exit code {rc}:\n{out}'
        assert out.count('process has finished cleanly') == 2, out
        assert 'Traceback' not in out and 'has died' not in out, out
    finally:
        launch.stop()
