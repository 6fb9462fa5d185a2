"""SIGINT for our ROS processes: stop through rclpy, never through a KeyboardInterrupt.

Ctrl-C on `ros2 launch` reaches each node twice: once from the terminal (the whole process group)
and once forwarded by launch. rclpy's own handler shuts the context down at the first one, which
ends spinning cleanly. Python's default handler would also raise a KeyboardInterrupt, later and
at any point. That includes the middle of shutdown (joining the worker, destroying the node), and
right after the context died, while start-up is still creating entities. The node then died with
a traceback and exit code -2 in 3 of 4 tries.
"""
from __future__ import annotations

import signal
from types import FrameType

__all__ = ['ignore_sigint', 'route_sigint_to_rclpy']


def _leave_it_to_rclpy(signum: int, frame: FrameType | None) -> None:
    """rclpy's handler, which runs first, has already shut the context down."""


def route_sigint_to_rclpy() -> None:
    """Call before ``rclpy.init``: SIGINT then only shuts the rclpy context down.

    Spinning ends with ExternalShutdownException. Code that runs while the context dies must
    check ``rclpy.ok()`` rather than wait for a KeyboardInterrupt.
    """
    signal.signal(signal.SIGINT, _leave_it_to_rclpy)


def ignore_sigint() -> None:
    """Call after ``rclpy.try_shutdown``, on the way out.

    While the interpreter exits, Python puts the default handler back (rclpy has removed its
    own). A late second Ctrl-C would then kill the exit with code -2, which launch reports as
    a crash. Python leaves an ignored signal ignored.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
