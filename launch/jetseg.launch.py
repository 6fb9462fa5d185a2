"""The one launch description of jetseg_ros; nano/agx/workstation.launch.py only pick its profile.

Starts the segmentation node with config/<profile>.yaml (overrides of the node's own defaults),
optionally our image_source instead of a camera, and optionally RViz2.

  ros2 launch jetseg_ros jetseg.launch.py profile:=agx image:=/front/image_raw
  ros2 launch jetseg_ros nano.launch.py source:=synthetic rviz:=true
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnShutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchContext, LaunchDescription

PACKAGE = 'jetseg_ros'
PROFILES = ('nano', 'agx', 'workstation')
SOURCES = ('none', 'synthetic', 'video', 'folder', 'rosbag')

# (name, default, description); profile's default is set per wrapper.
ARGUMENTS = (
    ('image', '/camera/image_raw', 'input image topic (remapped to the node\'s "image")'),
    ('camera_info', '/camera/camera_info', 'camera_info topic (remapped to the node\'s "camera_info")'),
    ('namespace', '', 'namespace of the started nodes'),
    ('node_name', 'jetseg', 'name of the segmentation node (its outputs are ~/labels, ~/overlay, ...)'),
    ('checkpoint', '', "weights: '' = shipped weights of the profile that fit the input (synthetic for "
     "source:=synthetic, else CamVid where shipped), 'camvid', 'synthetic', 'untrained', or a "
     '.safetensors path'),
    ('device', '', "auto | cpu | cuda; '' keeps the profile's setting"),
    ('backend', '', "auto | torch | openvino | onnxruntime | tensorrt; '' keeps the profile's setting"),
    ('use_sim_time', 'false', 'use /clock (for rosbag replay)'),
    ('rviz', 'false', 'start rviz2 with rviz/jetseg.rviz'),
    ('source', 'none', f"{' | '.join(SOURCES)}: start our image_source instead of a camera driver"),
    ('source_path', '', 'video file, image folder or rosbag2 for source:=video|folder|rosbag'),
    ('rate', '15.0', 'image_source frame rate in Hz'),
    ('num_frames', '0', 'image_source frames before it exits (0 = endless)'),
    ('params_file', '', "extra parameter YAML applied after config/<profile>.yaml ('' = none)"),
)


def _share_dir() -> Path:
    """share/jetseg_ros when installed, the source checkout otherwise (this file sits in launch/)."""
    return Path(__file__).resolve().parent.parent


def _is_true(text: str) -> bool:
    return text.strip().lower() in ('1', 'true', 'yes', 'on')


def _absolute_topic(name: str, namespace: str) -> str:
    """The fully qualified name ROS gives ``name`` for a node in ``namespace``."""
    if name.startswith('/'):
        return name
    namespace = namespace.strip('/')
    return f'/{namespace}/{name}' if namespace else f'/{name}'


def rviz_topics(arg: dict[str, str]) -> dict[str, str]:
    """The topics rviz/jetseg.rviz shows (written for the default arguments) -> this launch's topics.

    Given to rviz2 as remappings, so the view follows image:=, namespace:= and node_name:=.
    """
    node = _absolute_topic(arg['node_name'], arg['namespace'])
    return {'/camera/image_raw': _absolute_topic(arg['image'], arg['namespace']),
            '/jetseg/overlay': f'{node}/overlay', '/jetseg/color_mask': f'{node}/color_mask'}


def _first_ctrl_c_without_keyboard_interrupt() -> list:
    """Keep launch's own process from raising KeyboardInterrupt on the first Ctrl-C.

    Launch learns of SIGINT through a wake-up fd and shuts down cleanly, but leaves Python's
    default handler in place, which raises KeyboardInterrupt wherever launch's main thread is.
    Landing in asyncio's internals or a weakref callback it lost a task or printed a traceback,
    and `ros2 launch` exited 1 after both our processes had finished cleanly (2 of 3 CI runs).
    Launch ignores KeyboardInterrupt by design, so a handler that does nothing changes nothing
    else: the wake-up fd is still written. The old handler returns at shutdown, so processes
    that run launch inside them (launch_testing under pytest) get their Ctrl-C back.
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        return []  # the embedding program chose its own SIGINT handling: leave it alone
    if threading.current_thread() is not threading.main_thread():
        return []  # only the main thread may set handlers

    def restore(_event: object, _context: LaunchContext) -> None:
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, lambda _signum, _frame: None)
    return [RegisterEventHandler(OnShutdown(on_shutdown=restore))]


def _nodes(context: LaunchContext) -> list:
    """Resolve the arguments and build the actions (an OpaqueFunction: empty arguments mean 'unset')."""
    arg = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    profile = LaunchConfiguration('profile').perform(context)
    if profile not in PROFILES:
        raise ValueError(f"profile '{profile}': unknown (choose one of {', '.join(PROFILES)})")
    if arg['source'] not in SOURCES:
        raise ValueError(f"source '{arg['source']}': unknown (choose one of {', '.join(SOURCES)})")
    share = _share_dir()
    sim_time = _is_true(arg['use_sim_time'])
    params: list = [str(share / 'config' / f'{profile}.yaml')]
    if arg['params_file']:
        params.append(arg['params_file'])
    overrides = {'profile': profile, 'use_sim_time': sim_time}
    if not arg['checkpoint'] and arg['source'] == 'synthetic':
        arg['checkpoint'] = 'synthetic'  # the shipped weights trained on such scenes
    for key in ('checkpoint', 'device', 'backend'):
        if arg[key]:
            overrides[key] = arg[key]
    params.append(overrides)

    env = {}
    transport_profile = share / 'config' / 'fastdds_shm.xml'
    user_chose_transport = any(os.environ.get(v) for v in (
        'FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_BUILTIN_TRANSPORTS'))
    if not user_chose_transport:
        # What matters is the publisher's setting: our outputs (and our image_source) go out
        # through a big shared-memory segment; any subscriber on this machine receives them.
        env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(transport_profile)
    actions: list = [*_first_ctrl_c_without_keyboard_interrupt(), Node(
        package=PACKAGE, executable='segmentation_node', name=arg['node_name'],
        namespace=arg['namespace'], output='screen', parameters=params, additional_env=env,
        remappings=[('image', arg['image']), ('camera_info', arg['camera_info'])],
    )]
    if arg['source'] == 'none' and not user_chose_transport:
        actions.append(LogInfo(msg='hint: with Fast DDS, start the camera driver with '
                                   f'FASTDDS_DEFAULT_PROFILES_FILE={transport_profile}: its frames then '
                                   'arrive ~4x sooner and best-effort subscribers stop losing them'))
    if arg['source'] != 'none':
        actions.append(Node(
            package=PACKAGE, executable='image_source', name='image_source',
            namespace=arg['namespace'], output='screen', additional_env=env,
            parameters=[str(share / 'config' / f'{profile}.yaml'), {
                'source': arg['source'], 'path': arg['source_path'], 'rate': float(arg['rate']),
                'num_frames': int(arg['num_frames']), 'use_sim_time': sim_time,
                # Start the replay once the node listens (it subscribes after loading the model):
                # earlier frames would be lost, and a short num_frames run would show nothing.
                'wait_for_subscribers': 1}],
            remappings=[('camera/image_raw', arg['image']), ('camera/camera_info', arg['camera_info'])],
        ))
    if _is_true(arg['rviz']):
        shown = rviz_topics(arg)
        if shutil.which('rviz2'):
            actions.append(Node(package='rviz2', executable='rviz2', name='rviz2', output='screen',
                                arguments=['-d', str(share / 'rviz' / 'jetseg.rviz')],
                                parameters=[{'use_sim_time': sim_time}],
                                remappings=[(old, new) for old, new in shown.items() if old != new]))
        else:
            actions.append(LogInfo(msg='rviz:=true but rviz2 is not installed (apt install '
                                       'ros-$ROS_DISTRO-rviz2); starting without it. View the topics '
                                       f"{shown['/jetseg/overlay']} and {shown['/jetseg/color_mask']} "
                                       'with any image viewer.'))
    return actions


def generate_profile_description(profile: str = 'nano') -> LaunchDescription:
    """The launch description with ``profile`` as the default of the profile argument."""
    if profile not in PROFILES:
        raise ValueError(f"profile '{profile}': unknown (choose one of {', '.join(PROFILES)})")
    declared = [DeclareLaunchArgument('profile', default_value=profile, choices=list(PROFILES),
                                      description='JetSeg profile: config/<profile>.yaml and its weights')]
    declared += [DeclareLaunchArgument(name, default_value=default, description=text)
                 for name, default, text in ARGUMENTS]
    return LaunchDescription([*declared, OpaqueFunction(function=_nodes)])


def generate_launch_description() -> LaunchDescription:
    """`ros2 launch jetseg_ros jetseg.launch.py profile:=agx`."""
    return generate_profile_description('nano')
