"""A real ROS 2 workspace build: colcon builds the package (messages included) and installs it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_colcon_build_installs_messages_executables_and_share_files(tmp_path):
    colcon = shutil.which('colcon', path=str(VENV_BIN)) or shutil.which('colcon')
    if colcon is None:
        pytest.skip('colcon is not installed (scripts/setup.sh installs it with ../shared/ros-launch)')
    src = tmp_path / 'ws' / 'src'
    src.mkdir(parents=True)
    (src / 'jetseg_ros').symlink_to(REPO_ROOT)
    env = dict(os.environ, PATH=f'{VENV_BIN}{os.pathsep}{os.environ["PATH"]}')
    build = subprocess.run(
        [colcon, 'build', '--cmake-args', '-DBUILD_TESTING=OFF', f'-DPython3_EXECUTABLE={sys.executable}'],
        cwd=tmp_path / 'ws', env=env, capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    prefix = tmp_path / 'ws' / 'install' / 'jetseg_ros'
    for exe in ('segmentation_node', 'image_source'):
        assert os.access(prefix / 'lib' / 'jetseg_ros' / exe, os.X_OK)
    share = prefix / 'share' / 'jetseg_ros'
    for name in ('launch/nano.launch.py', 'config/nano.yaml', 'rviz/jetseg.rviz', 'msg/ClassInfo.msg'):
        assert (share / name).is_file(), name

    # The installed copy imports with its generated messages, from outside the source tree.
    site = next((prefix / 'lib').glob('python3*/site-packages'))
    check = subprocess.run(
        [sys.executable, '-c',
         'import jetseg_ros.msg as m, jetseg_core, jetseg_ros.segmentation_node; '
         'print(m.ClassInfo.__module__, jetseg_core.__file__)'],
        cwd=tmp_path, env=dict(env, PYTHONPATH=str(site)), capture_output=True, text=True, timeout=120,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert str(site) in check.stdout
