"""Helpers for tests that run real ROS 2 nodes in separate processes over real DDS.

Why: launch_testing is not installable here, and tests must not see each other's
topics when several run at once on one machine. Everything below uses plain
subprocess + rclpy.

API (import with ``from ros_testing import ...`` from a test in test/):

``REPO_ROOT``
    The source checkout (run nodes with cwd=REPO_ROOT so they import the source tree).
``new_domain_id() -> int``
    A ROS_DOMAIN_ID in 1..200 derived from the pid and a counter (distinct per call).
``ros_env(domain_id, **extra) -> dict``
    os.environ plus ROS_DOMAIN_ID, FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA,
    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, unbuffered Python, plain log colours.
    Importing this module also sets the transport/discovery variables in this
    process, so an in-process RosHarness talks to the child processes.
``python_module_command(module, params=None, remaps=None, name=None, ros_args=()) -> list[str]``
    ``[sys.executable, '-m', module, '--ros-args', '-p', 'k:=v', '-r', 'a:=b', ...]``;
    ``params`` values are rendered as ROS parameter literals (bools lower-case).
``RosProcess(cmd, domain_id, cwd=REPO_ROOT, env_extra=None)``
    Starts the command in a new session with merged stdout/stderr collected
    by a reader thread.  ``.output`` (str so far), ``.wait_for_output(text, timeout)
    -> bool``, ``.wait(timeout) -> int | None`` (exit code), ``.running``,
    ``.stop(timeout=15) -> int`` (SIGINT to that pid, SIGKILL only if it hangs; returns
    the exit code).  A context manager: leaving the block stops it.
``RosHarness(domain_id, name='test_harness')``
    An rclpy node in this process, in its own rclpy Context, spun by a background
    thread.  ``.publisher(topic, msg_type, qos=reliable depth 10)``,
    ``.record(topic, msg_type, qos=reliable depth 50) -> TopicRecorder``,
    ``.wait_for_subscribers(publisher, count=1, timeout) -> bool``,
    ``.wait_for_publishers(topic, count=1, timeout) -> bool``,
    ``.set_parameters(node_name, {name: value}, timeout) -> list[SetParametersResult]``,
    ``.get_parameters(node_name, [names], timeout) -> list`` (python values),
    ``.now() -> builtin_interfaces/Time`` (this node's clock), ``.close()``. Context manager.
``RELIABLE``, ``RELIABLE_DEEP``, ``BEST_EFFORT``, ``LATCHED``
    QoS profiles (LATCHED = reliable + transient_local depth 1, for ~/class_info).
``TopicRecorder``
    ``.messages`` (copy of the list), ``.count``, ``.clear()``,
    ``.wait_for_count(n, timeout) -> list`` (raises AssertionError with the topic name
    on timeout), ``.wait_for(predicate, timeout) -> msg`` (first message, received
    from now on or already recorded, for which predicate(msg) is true; AssertionError
    on timeout).
``start_segmentation_node(domain_id, params=None, remaps=None, name=None) -> RosProcess``
    The JetSeg node from the source tree; ``wait_until_ready(proc, timeout)`` waits for its
    start-up line (AssertionError with the output if it exits first).
``wait_until(predicate, timeout, interval=0.05) -> bool``
    Polls a cheap predicate (for things with no event to wait on).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Self

import rclpy
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy

REPO_ROOT = Path(__file__).resolve().parents[1]

TRANSPORT_ENV = {
    'FASTDDS_BUILTIN_TRANSPORTS': 'LARGE_DATA',
    'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
}
# A LARGE_DATA participant and a default one exchange nothing: this process must match its children.
os.environ.update(TRANSPORT_ENV)

_domain_counter = itertools.count()


def new_domain_id() -> int:
    """Return a ROS_DOMAIN_ID in 1..200 unlikely to be shared with another test or test process."""
    return (os.getpid() * 37 + next(_domain_counter) * 11) % 200 + 1


def ros_env(domain_id: int, **extra: str) -> dict[str, str]:
    """Environment for a child process isolated on ``domain_id``."""
    env = dict(os.environ)
    env.update(TRANSPORT_ENV)
    env.update({
        'ROS_DOMAIN_ID': str(domain_id),
        'PYTHONUNBUFFERED': '1',
        'RCUTILS_COLORIZED_OUTPUT': '0',
        'RCUTILS_LOGGING_BUFFERED_STREAM': '0',
    })
    env.pop('ROS_LOCALHOST_ONLY', None)
    env.update(extra)
    return env


def _param_literal(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str) and value == '':
        return "''"
    return str(value)


def python_module_command(module: str, params: Mapping[str, Any] | None = None,
                          remaps: Mapping[str, str] | None = None, name: str | None = None,
                          ros_args: Iterable[str] = ()) -> list[str]:
    """Command line running ``python -m module`` with ROS parameters and remappings."""
    cmd = [sys.executable, '-m', module, '--ros-args']
    if name:
        cmd += ['-r', f'__node:={name}']
    for key, value in (params or {}).items():
        cmd += ['-p', f'{key}:={_param_literal(value)}']
    for src, dst in (remaps or {}).items():
        cmd += ['-r', f'{src}:={dst}']
    cmd += list(ros_args)
    return cmd


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class RosProcess:
    """A child process in its own session and ROS domain, with its output captured."""

    def __init__(self, cmd: list[str], domain_id: int, cwd: Path | str = REPO_ROOT,
                 env_extra: Mapping[str, str] | None = None) -> None:
        self.cmd = list(cmd)
        self._chunks: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            self.cmd, cwd=str(cwd), env=ros_env(domain_id, **dict(env_extra or {})),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, text=True, errors='replace', bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self._chunks.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return ''.join(self._chunks)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_for_output(self, text: str, timeout: float) -> bool:
        """Wait until ``text`` appears in the output (False on timeout or if the process ended)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while text not in ''.join(self._chunks):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return text in ''.join(self._chunks)
                self._cond.wait(min(remaining, 0.5))
            return True

    def wait(self, timeout: float) -> int | None:
        """Exit code, or None if still running after ``timeout`` seconds."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(5)
        return rc

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT this pid (never a group or a name); SIGKILL only if it does not exit in time.

        Then SIGKILL whatever it left in its process group: a `ros2 launch` killed that way leaves
        its nodes running (one kept a core 25% busy for the rest of a suite). The group is the
        process's own session (start_new_session), so it holds nothing else.
        """
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
        rc = self.wait(timeout)
        if rc is None:
            self.proc.kill()
            rc = self.proc.wait(10)
            self._reader.join(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return rc

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TopicRecorder:
    """Collects every message received on one topic and lets a test wait for them."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._messages: list[Any] = []
        self._cond = threading.Condition()
        self.subscription = None

    def _callback(self, msg: Any) -> None:
        with self._cond:
            self._messages.append(msg)
            self._cond.notify_all()

    @property
    def messages(self) -> list[Any]:
        with self._cond:
            return list(self._messages)

    @property
    def count(self) -> int:
        with self._cond:
            return len(self._messages)

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait_for_count(self, n: int, timeout: float) -> list[Any]:
        """Wait until at least ``n`` messages have been recorded; return them all."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self._messages) >= n, timeout)
            if not ok:
                raise AssertionError(
                    f'{self.topic}: got {len(self._messages)} of {n} messages in {timeout} s')
            return list(self._messages)

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float) -> Any:
        """First recorded message (old or new) for which ``predicate`` is true."""
        checked = 0
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in self._messages[checked:]:
                    if predicate(msg):
                        return msg
                checked = len(self._messages)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f'{self.topic}: no matching message in {timeout} s '
                                         f'({checked} messages received)')
                self._cond.wait(remaining)


RELIABLE = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
RELIABLE_DEEP = QoSProfile(depth=50, reliability=QoSReliabilityPolicy.RELIABLE)
BEST_EFFORT = QoSProfile(depth=50, reliability=QoSReliabilityPolicy.BEST_EFFORT)
LATCHED = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                     durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)


class RosHarness:
    """An rclpy node inside the test process, isolated on ``domain_id``, spun in the background."""

    def __init__(self, domain_id: int, name: str = 'test_harness') -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # shutdown races end the spin thread quietly
            self.executor.spin()

    def publisher(self, topic: str, msg_type: type, qos: QoSProfile | int = RELIABLE):
        # A no-op QoS-event handler: tests create mismatches on purpose; rclpy's default one logs through a
        # deprecated call that pytest reports as a warning.
        return self.node.create_publisher(msg_type, topic, qos, event_callbacks=PublisherEventCallbacks(
            incompatible_qos=lambda _event: None))

    def record(self, topic: str, msg_type: type,
               qos: QoSProfile | int = RELIABLE_DEEP) -> TopicRecorder:
        """Subscribe and record.  A reliable subscriber (the default) matches only reliable
        publishers; pass BEST_EFFORT to also hear best-effort ones."""
        recorder = TopicRecorder(topic)
        recorder.subscription = self.node.create_subscription(
            msg_type, topic, recorder._callback, qos,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=lambda _event: None))
        return recorder

    def wait_for_subscribers(self, publisher, count: int = 1, timeout: float = 30.0) -> bool:
        return wait_until(lambda: publisher.get_subscription_count() >= count, timeout)

    def wait_for_publishers(self, topic: str, count: int = 1, timeout: float = 30.0) -> bool:
        return wait_until(lambda: self.node.count_publishers(topic) >= count, timeout)

    def now(self):
        return self.node.get_clock().now().to_msg()

    def _call(self, srv_type: type, service: str, request: Any, timeout: float) -> Any:
        client = self.node.create_client(srv_type, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f'service {service} not available in {timeout} s')
            future = client.call_async(request)
            done = threading.Event()
            future.add_done_callback(lambda _f: done.set())
            if not done.wait(timeout):
                raise AssertionError(f'service {service} did not answer in {timeout} s')
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameters(self, node_name: str, values: Mapping[str, Any], timeout: float = 20.0) -> list:
        """Set parameters on a remote node; returns its SetParametersResult list (one per value)."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request()
        request.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        return list(self._call(SetParameters, f'{node_name}/set_parameters', request, timeout).results)

    def get_parameters(self, node_name: str, names: list[str], timeout: float = 20.0) -> list:
        """Python values of parameters on a remote node."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        request = GetParameters.Request()
        request.names = list(names)
        response = self._call(GetParameters, f'{node_name}/get_parameters', request, timeout)
        return [parameter_value_to_python(v) for v in response.values]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- the segmentation node

NODE_MODULE = 'jetseg_ros.segmentation_node'
NODE_READY_LINE = 'ready: profile'


def start_segmentation_node(domain_id: int, params: Mapping[str, Any] | None = None,
                            remaps: Mapping[str, str] | None = None, name: str | None = None) -> RosProcess:
    """Start ``python -m jetseg_ros.segmentation_node`` from the source tree (not yet ready: see below)."""
    return RosProcess(python_module_command(NODE_MODULE, params, remaps, name), domain_id)


def wait_until_ready(proc: RosProcess, timeout: float = 120.0) -> None:
    """Wait for the node's start-up line; fail with its output if it exits or hangs."""
    if not proc.wait_for_output(NODE_READY_LINE, timeout):
        proc.stop()
        raise AssertionError(f'node not ready in {timeout} s (exit {proc.proc.returncode}):\n{proc.output}')
