"""jetseg-demo end to end: real node and image source processes, real files written."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from ros_testing import REPO_ROOT


def run_demo(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'jetseg_ros.demo', *args], check=False, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_demo_writes_pngs_gif_and_numeric_summary(tmp_path: Path, tiny_checkpoint: Path) -> None:
    out = tmp_path / 'demo'
    result = run_demo('--frames', '20', '--save-every', '5', '--checkpoint', str(tiny_checkpoint),
                      '--output', str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert str(out.resolve()) in result.stdout  # says where the outputs are

    sheet = Image.open(out / 'contact_sheet.png')
    sheet.verify()
    with Image.open(out / 'contact_sheet.png') as sheet:
        assert sheet.format == 'PNG' and sheet.width >= 900 and sheet.height >= 300
    overlays = sorted((out / 'frames').glob('overlay_*.png'))
    assert overlays, 'no overlay frame saved'
    with Image.open(overlays[0]) as first:
        assert first.format == 'PNG' and first.size == (640, 480)  # outputs at the camera's size
    with Image.open(out / 'preview.gif') as gif:
        assert gif.format == 'GIF' and gif.n_frames > 1

    summary = json.loads((out / 'summary.json').read_text())
    assert summary['frames_processed'] > 0 and summary['output_rate_hz'] > 0
    assert summary['frames_in'] <= 20
    for key in ('end_to_end_at_node', 'inference', 'node_overhead', 'end_to_end_at_viewer'):
        stats = summary['latency_ms'][key]
        assert math.isfinite(stats['p50']) and math.isfinite(stats['p95'])
        assert 0 < stats['p50'] <= stats['p95']
    lat = summary['latency_ms']
    assert lat['inference']['p50'] < lat['end_to_end_at_node']['p50']
    assert summary['exit_codes'] == {'image_source': 0, 'segmentation_node': 0}


def test_demo_exits_1_with_the_node_log_when_the_node_cannot_start(tmp_path: Path) -> None:
    broken = tmp_path / 'broken.safetensors'
    broken.write_bytes(b'\x00' * 64)
    result = run_demo('--frames', '5', '--checkpoint', str(broken), '--output', str(tmp_path / 'out'),
                      '--startup-timeout', '90', timeout=150)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'jetseg-demo: error: segmentation_node exited' in result.stderr
    assert 'broken.safetensors' in result.stderr  # the node's own one-line reason is shown
    assert 'Traceback' not in result.stderr


def test_demo_rejects_a_missing_checkpoint_file_with_exit_2(tmp_path: Path) -> None:
    result = run_demo('--checkpoint', str(tmp_path / 'nope.safetensors'), timeout=60)
    assert result.returncode == 2
    assert 'nope.safetensors' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.parametrize('option', [('--size', '320x240'), ('--qos', 'best_effort')])
def test_demo_refuses_options_the_launch_file_would_ignore(option: tuple[str, str]) -> None:
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (ROS 2, or shared/ros-launch)')
    result = run_demo('--use-launch', *option, timeout=60)
    assert result.returncode == 2
    assert 'cannot be used with --use-launch' in result.stderr and 'Traceback' not in result.stderr


def test_demo_through_ros2_launch_with_the_synthetic_scene_weights(tmp_path: Path) -> None:
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (ROS 2, or shared/ros-launch)')
    out = tmp_path / 'demo'
    result = run_demo('--use-launch', '--frames', '20', '--save-every', '5', '--output', str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    # The demo streams synthetic scenes, so it runs the weights trained on such scenes.
    assert 'trained on synthetic' in result.stdout
    assert sorted((out / 'frames').glob('overlay_*.png')), 'no overlay frame saved'
    assert json.loads((out / 'summary.json').read_text())['frames_processed'] > 0


def test_demo_children_import_this_jetseg_ros_whatever_the_current_directory(tmp_path: Path) -> None:
    # `python -m` and `-c` put the current directory first on sys.path: a jetseg_ros/ there
    # (another checkout, say) must not replace the one the demo or the benchmark runs from.
    from jetseg_ros.demo import PACKAGE_ROOT, ros_env
    (tmp_path / 'jetseg_ros').mkdir()
    (tmp_path / 'jetseg_ros' / '__init__.py').write_text('')
    probe = 'import jetseg_ros, pathlib; print(pathlib.Path(jetseg_ros.__file__).resolve().parent.parent)'
    out = subprocess.run([sys.executable, '-c', probe], cwd=tmp_path, env=ros_env(0), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(PACKAGE_ROOT)
