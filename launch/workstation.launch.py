"""JetSeg workstation profile: `ros2 launch jetseg_ros workstation.launch.py [source:=synthetic] ...`.

A thin wrapper: everything is described once in jetseg.launch.py (see its arguments).
"""
import importlib.util
from pathlib import Path

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    shared = Path(__file__).resolve().with_name('jetseg.launch.py')
    spec = importlib.util.spec_from_file_location('jetseg_shared_launch', shared)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_profile_description('workstation')
