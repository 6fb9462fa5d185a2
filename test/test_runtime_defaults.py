"""Each profile's tuned run-time settings apply wherever the user sets no value.

The Segmenter, jetseg-predict and jetseg-benchmark without a thread count run the profile's best
(jetseg_core.profiles.RUNTIME_SETTINGS); precision defaults to 'auto'. The node is tested in
test_node_startup.py.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from PIL import Image

from jetseg_core.benchmark import main as benchmark_main
from jetseg_core.checkpoint import load_checkpoint
from jetseg_core.inference import Segmenter
from jetseg_core.predict import main as predict_main
from jetseg_core.profiles import RUNTIME_SETTINGS, ThreadSetting, one_per_core, resolve_thread_setting


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='module')
def tiny(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


def test_every_profile_has_run_time_settings():
    assert set(RUNTIME_SETTINGS) == {'nano', 'agx', 'workstation'}
    assert resolve_thread_setting('nano', 'cpu') == ThreadSetting(1, 'nano default')
    assert resolve_thread_setting('agx', 'cpu') == ThreadSetting(one_per_core(), 'agx default')
    assert resolve_thread_setting('nano', 'cpu', 3) == ThreadSetting(3, 'requested')
    assert str(resolve_thread_setting('nano', 'cpu')) == '1 (nano default)'


def test_segmenter_without_num_threads_runs_the_profile_thread_count(tiny, restore_threads):
    model, meta = tiny
    torch.set_num_threads(2)  # what torch picks by itself on a 2-core machine
    seg = Segmenter(model, meta, device='cpu')
    assert torch.get_num_threads() == 1
    assert seg.threads == ThreadSetting(1, 'nano default')
    assert seg.precision == 'fp32'  # 'auto' on CPU
    seg = Segmenter(model, meta, device='cpu', num_threads=2)
    assert torch.get_num_threads() == 2 and seg.threads == ThreadSetting(2, 'requested')


def test_precision_defaults_to_auto(tiny, capsys):
    model, meta = tiny
    assert inspect.signature(Segmenter).parameters['precision'].default == 'auto'
    seg = Segmenter(model, meta, device='auto')
    assert seg.precision == ('fp16' if seg.device == 'cuda' else 'fp32')
    with pytest.raises(SystemExit):
        predict_main(['--help'])
    assert "auto (fp16 on CUDA) (default: auto)" in ' '.join(capsys.readouterr().out.split())


def test_predict_without_threads_runs_the_profile_thread_count(tiny_checkpoint, tmp_path, capsys,
                                                               restore_threads):
    torch.set_num_threads(2)
    picture = tmp_path / 'street.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(picture)
    code = predict_main([str(picture), '-o', str(tmp_path / 'out'), '--checkpoint', str(tiny_checkpoint),
                         '--device', 'cpu', '--outputs', 'labels'])
    out = capsys.readouterr().out
    assert code == 0, out
    assert 'threads 1 (nano default)' in out
    assert torch.get_num_threads() == 1


def test_benchmark_without_threads_times_the_profile_thread_count(capsys, restore_threads):
    torch.set_num_threads(2)
    assert benchmark_main(['--size', '64x96', '--iterations', '1', '--warmup', '0',
                           '--variants', 'graph']) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip().endswith('%')]
    assert [row[:2] for row in rows] == [['1', 'graph']]
