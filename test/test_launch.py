"""launch_testing: `nano.launch.py source:=synthetic` brings up a pipeline that publishes labels.

Runs with pytest (launch_testing registers a pytest plugin) or `launch_test test/test_launch.py`.
The launch file of this checkout is used; its nodes import this checkout's jetseg_ros.
"""
from __future__ import annotations

import os
import time
import unittest
from pathlib import Path

import pytest

pytest.importorskip('launch_ros', reason='launch_ros is not installed (ROS 2, or shared/ros-launch)')
pytest.importorskip('launch_testing', reason='launch_testing is not installed (ROS 2, or shared/ros-launch)')

import launch_testing.actions
import launch_testing.asserts
import rclpy
from launch.actions import IncludeLaunchDescription, SetEnvironmentVariable
from launch.launch_description_sources import PythonLaunchDescriptionSource
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import Image

import launch

REPO_ROOT = Path(__file__).resolve().parents[1]
DOMAIN_ID = (os.getpid() * 13) % 90 + 110  # the launched nodes and this test's node, apart from other tests
ENV = {
    'ROS_DOMAIN_ID': str(DOMAIN_ID),
    'FASTDDS_BUILTIN_TRANSPORTS': 'LARGE_DATA',
    'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
    'PYTHONPATH': os.pathsep.join([str(REPO_ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p]),
}


@pytest.mark.launch_test
def generate_test_description():
    nano = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(REPO_ROOT / 'launch' / 'nano.launch.py')),
        launch_arguments={'source': 'synthetic', 'checkpoint': 'untrained', 'rate': '5.0'}.items())
    return launch.LaunchDescription([
        *(SetEnvironmentVariable(name, value) for name, value in ENV.items()),
        nano,
        launch_testing.actions.ReadyToTest(),
    ])


class TestNanoLaunchWithSyntheticSource(unittest.TestCase):

    @classmethod
    def setUpClass(cls) -> None:
        os.environ['FASTDDS_BUILTIN_TRANSPORTS'] = 'LARGE_DATA'
        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        cls.context = rclpy.Context()
        rclpy.init(context=cls.context, domain_id=DOMAIN_ID)
        cls.node = rclpy.create_node('launch_test_listener', context=cls.context)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.node.destroy_node()
        rclpy.try_shutdown(context=cls.context)

    def test_labels_arrive_on_jetseg_labels_for_the_synthetic_camera(self) -> None:
        labels: list[Image] = []
        qos = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
        self.node.create_subscription(Image, '/jetseg/labels', labels.append, qos)
        executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        executor.add_node(self.node)
        deadline = time.monotonic() + 120  # model load on a busy 2-core machine
        while time.monotonic() < deadline and len(labels) < 2:
            executor.spin_once(timeout_sec=0.1)
        executor.remove_node(self.node)
        self.assertGreaterEqual(len(labels), 2, 'no labels on /jetseg/labels from nano.launch.py')
        msg = labels[-1]
        self.assertEqual(msg.encoding, 'mono8')
        self.assertEqual(msg.header.frame_id, 'camera')  # the image source's frame, carried through
        self.assertGreater(msg.width * msg.height, 0)
        self.assertLess(max(bytes(msg.data)), 11, 'label ids beyond the 11 CamVid classes')


@launch_testing.post_shutdown_test()
class TestNanoLaunchShutdown(unittest.TestCase):

    def test_every_process_exits_cleanly_on_sigint(self, proc_info) -> None:
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2])
