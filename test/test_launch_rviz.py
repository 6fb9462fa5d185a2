"""RViz shows what the launch started: rviz/jetseg.rviz names the default topics and `rviz:=true`
remaps them to the topics of the launch's image:=, namespace:= and node_name:=.

rviz2 itself (a GUI) is not run here; the second test subscribes, as rviz2's Image displays do
(best effort), to each topic the remapping points at and requires images there.
"""
from __future__ import annotations

import importlib.util
import shutil

import pytest
import yaml
from ros_testing import (
    BEST_EFFORT,
    REPO_ROOT,
    RosHarness,
    RosProcess,
    new_domain_id,
)
from sensor_msgs.msg import Image

from jetseg_ros.demo import child_pythonpath, ros2_command

pytest.importorskip('launch_ros', reason='launch_ros is not installed (ROS 2, or shared/ros-launch)')


def _launch_module():
    spec = importlib.util.spec_from_file_location('jetseg_launch', REPO_ROOT / 'launch' / 'jetseg.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _image_display_topics(node: object) -> list[str]:
    """Topics of every rviz_default_plugins/Image display in a parsed .rviz file."""
    found = []
    if isinstance(node, dict):
        if node.get('Class') == 'rviz_default_plugins/Image':
            found.append(node['Topic']['Value'])
        for value in node.values():
            found += _image_display_topics(value)
    elif isinstance(node, list):
        for value in node:
            found += _image_display_topics(value)
    return found


def test_rviz_config_shows_the_default_launch_topics():
    launch = _launch_module()
    defaults = {name: default for name, default, _ in launch.ARGUMENTS}
    shown = launch.rviz_topics(defaults)
    config = yaml.safe_load((REPO_ROOT / 'rviz' / 'jetseg.rviz').read_text())
    assert sorted(_image_display_topics(config)) == sorted(shown)
    assert all(old == new for old, new in shown.items()), shown  # no remapping with the defaults


def test_rviz_remappings_point_at_the_topics_a_renamed_pipeline_publishes():
    ros2 = ros2_command()
    if ros2 is None:
        pytest.skip('the ros2 command is not installed (ROS 2, or shared/ros-launch)')
    arguments = {'namespace': 'robot1', 'node_name': 'seg', 'image': 'front/image'}
    shown = _launch_module().rviz_topics(arguments)
    assert shown == {'/camera/image_raw': '/robot1/front/image', '/jetseg/overlay': '/robot1/seg/overlay',
                     '/jetseg/color_mask': '/robot1/seg/color_mask'}
    domain = new_domain_id()
    # Without rviz2 (as here), rviz:=true only logs where to look; with it, a window would open.
    no_rviz2 = shutil.which('rviz2') is None
    cmd = [ros2, 'launch', str(REPO_ROOT / 'launch' / 'nano.launch.py'), 'source:=synthetic',
           'checkpoint:=untrained', 'rate:=10.0', *(f'{k}:={v}' for k, v in arguments.items()),
           *(['rviz:=true'] if no_rviz2 else [])]
    with RosHarness(domain) as harness:
        recorders = {topic: harness.record(topic, Image, BEST_EFFORT) for topic in shown.values()}
        with RosProcess(cmd, domain, env_extra={'PYTHONPATH': child_pythonpath()}) as launch:
            assert launch.wait_for_output('ready:', 120), launch.output
            if no_rviz2:
                assert 'View the topics /robot1/seg/overlay and /robot1/seg/color_mask' in launch.output
            for topic, recorder in recorders.items():
                msg = recorder.wait_for_count(1, 60)[-1]
                assert (msg.width, msg.height) == (640, 480), topic
                assert msg.encoding == 'rgb8', topic
            # config/nano.yaml (/** keys) reaches the renamed node too
            assert harness.get_parameters('/robot1/seg', ['profile', 'max_frame_age_ms']) == ['nano', 500]
