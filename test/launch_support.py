"""What the launch_testing files share: the environment, the nano launch, a listener node per test class.

launch_testing collects module-level ``generate_test_description`` functions, so each test file
keeps its own one-line function that calls :func:`nano_launch`.
"""
from __future__ import annotations

import os
import unittest

import launch_testing.actions
import rclpy
from launch.actions import IncludeLaunchDescription, SetEnvironmentVariable
from launch.launch_description_sources import PythonLaunchDescriptionSource
from ros_testing import REPO_ROOT, TRANSPORT_ENV

import launch
from jetseg_ros.demo import child_pythonpath


def nano_launch(domain_id: int, **arguments: str) -> launch.LaunchDescription:
    """This checkout's nano.launch.py with ``arguments`` on its own domain (nodes import this checkout)."""
    env = {**TRANSPORT_ENV, 'ROS_DOMAIN_ID': str(domain_id),
           'PYTHONPATH': child_pythonpath()}
    nano = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(REPO_ROOT / 'launch' / 'nano.launch.py')),
        launch_arguments=arguments.items())
    return launch.LaunchDescription([
        *(SetEnvironmentVariable(name, value) for name, value in env.items()),
        nano,
        launch_testing.actions.ReadyToTest(),
    ])


class ListenerTestCase(unittest.TestCase):
    """A test class with its own rclpy context and node (``cls.node``) on ``domain_id``."""

    domain_id = 0

    @classmethod
    def setUpClass(cls) -> None:
        os.environ.update(TRANSPORT_ENV)  # this participant must match the launched ones
        cls.context = rclpy.Context()
        rclpy.init(context=cls.context, domain_id=cls.domain_id)
        cls.node = rclpy.create_node(f'{cls.__name__.lower()}_listener', context=cls.context)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.node.destroy_node()
        rclpy.try_shutdown(context=cls.context)
