"""launch_testing: `nano.launch.py use_sim_time:=true` runs the whole pipeline on the /clock it is given.

The test publishes /clock from simulated second 1000 on, as a simulator or `ros2 bag play --clock`
would. The image source stamps frames with that clock, the node carries the stamps through and
measures ages with the same clock: a node on the wall clock would report ages of ~56 years.
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
from builtin_interfaces.msg import Time
from launch_support import ListenerTestCase, nano_launch
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image

DOMAIN_ID = (os.getpid() * 17) % 90 + 110  # apart from other tests' domains
SIM_START_S = 1000


@pytest.mark.launch_test
def generate_test_description():
    return nano_launch(DOMAIN_ID, source='synthetic', checkpoint='untrained', rate='5.0', use_sim_time='true')


class TestNanoLaunchOnSimulatedTime(ListenerTestCase):
    domain_id = DOMAIN_ID

    def test_stamps_and_ages_follow_the_published_clock(self) -> None:
        from jetseg_ros.msg import SegmentationLatency

        started = time.monotonic()
        clock_pub = self.node.create_publisher(Clock, '/clock', 10)

        def tick() -> None:  # simulated time runs with wall time, from second 1000
            ns = SIM_START_S * 10**9 + int((time.monotonic() - started) * 1e9)
            clock_pub.publish(Clock(clock=Time(sec=ns // 10**9, nanosec=ns % 10**9)))

        self.node.create_timer(0.01, tick)
        labels: list[Image] = []
        latency: list[SegmentationLatency] = []
        qos = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
        self.node.create_subscription(Image, '/jetseg/labels', labels.append, qos)
        self.node.create_subscription(SegmentationLatency, '/jetseg/latency', latency.append, 10)
        executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        executor.add_node(self.node)
        deadline = time.monotonic() + 120  # model load on a busy 2-core machine
        while time.monotonic() < deadline and (len(labels) < 2 or len(latency) < 2):
            executor.spin_once(timeout_sec=0.01)
        elapsed = time.monotonic() - started
        executor.remove_node(self.node)
        self.assertGreaterEqual(len(labels), 2, 'no labels on /jetseg/labels with use_sim_time:=true')
        self.assertGreaterEqual(len(latency), 2, 'no latency reports with use_sim_time:=true')
        for msg in labels:
            self.assertGreaterEqual(msg.header.stamp.sec, SIM_START_S)  # the source stamped sim time
            self.assertLessEqual(msg.header.stamp.sec, SIM_START_S + elapsed + 1)
        for report in latency:
            self.assertGreaterEqual(report.header.stamp.sec, SIM_START_S)
            # Sim-time ages: small and positive (a wall-clock node would report ~1.8e12 ms).
            self.assertGreaterEqual(report.total_ms, 0.0)
            self.assertLess(report.total_ms, 10_000.0)


@launch_testing.post_shutdown_test()
class TestNanoLaunchOnSimulatedTimeShutdown(unittest.TestCase):

    def test_every_process_exits_cleanly_on_sigint(self, proc_info) -> None:
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
