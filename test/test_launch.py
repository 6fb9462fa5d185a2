"""launch_testing: `nano.launch.py source:=synthetic` brings up a pipeline that publishes labels.

Runs with pytest (launch_testing registers a pytest plugin) or `launch_test test/test_launch.py`.
The launch file of this checkout is used; its nodes import this checkout's jetseg_ros.
"""
from __future__ import annotations

import os
import time
import unittest

import pytest

pytest.importorskip('launch_ros', reason='launch_ros is not installed (ROS 2, or shared/ros-launch)')
pytest.importorskip('launch_testing', reason='launch_testing is not installed (ROS 2, or shared/ros-launch)')

import launch_testing.asserts
import rclpy
from launch_support import ListenerTestCase, nano_launch
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import Image

DOMAIN_ID = (os.getpid() * 13) % 90 + 110  # apart from other tests' domains


@pytest.mark.launch_test
def generate_test_description():
    return nano_launch(DOMAIN_ID, source='synthetic', checkpoint='untrained', rate='5.0')


class TestNanoLaunchWithSyntheticSource(ListenerTestCase):
    domain_id = DOMAIN_ID

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
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
