"""jetseg-train: real training steps on tiny synthetic sets (nano, 64x96, one thread)."""
from __future__ import annotations

import csv
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from jetseg_core import train
from jetseg_core.checkpoint import load_checkpoint, restore_training_state
from jetseg_core.palettes import CAMVID11

REPO = Path(__file__).resolve().parents[1]
TINY = ['--dataset', 'synthetic', '--synthetic-scenes', '8', '--synthetic-val-scenes', '2', '--size', '64x96',
        '--batch-size', '4', '--threads', '1', '--workers', '0', '--no-progress']
STEPS_PER_EPOCH = 2  # 8 scenes / batch 4
# 8 tiny scenes have few pixels per class, so JetLoss's class weights span ~40x and build_loss says
# so; that warning has its own test in test_loss.py.
pytestmark = [pytest.mark.filterwarnings('ignore:JetLoss class weights span:UserWarning'),
              pytest.mark.forks_workers]  # some runs train in this process with DataLoader workers


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline='') as f:
        return list(csv.DictReader(f))


def _adam_steps(checkpoint: Path) -> int:
    """Steps recorded in the saved AdamW state (what a resumed optimiser continues from)."""
    model, _ = load_checkpoint(checkpoint)
    opt = train.build_optimizer(model, train.build_parser().parse_args([]))
    restore_training_state(checkpoint, opt)
    return int(next(iter(opt.state.values()))['step'])


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''),
                OMP_NUM_THREADS='1')


@pytest.fixture(scope='module')
def two_epoch_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('train') / 'run'
    argv = [*TINY, '--epochs', '2', '--loss', 'jetloss+ce', '--seed', '3', '--output', str(out)]
    assert train.main(argv) == 0
    return out


def test_training_writes_best_and_last_checkpoints_csv_and_plot(two_epoch_run: Path):
    out = two_epoch_run
    for name in ('best.safetensors', 'last.safetensors', 'log.csv', 'training.png'):
        assert (out / name).is_file(), name
    assert (out / 'training.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    rows = _rows(out / 'log.csv')
    assert [int(r['epoch']) for r in rows] == [1, 2]
    for r in rows:
        assert float(r['train_loss']) > 0
        assert 0.0 <= float(r['val_miou']) <= 1.0
        assert float(r['images_per_s']) > 0
    model, meta = load_checkpoint(out / 'last.safetensors')
    assert meta.input_size == (64, 96)
    assert meta.class_names == list(CAMVID11.class_names)
    assert meta.extra['epoch'] == 2 and meta.extra['loss'] == 'jetloss+ce'
    assert 'NOT CamVid' in meta.trained_on and '8 scenes' in meta.trained_on
    best_meta = load_checkpoint(out / 'best.safetensors')[1]
    assert best_meta.extra['miou'] == pytest.approx(max(float(r['val_miou']) for r in rows), abs=1e-6)
    assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 11, 64, 96)


def test_resume_continues_from_saved_epoch_with_optimizer_state(two_epoch_run: Path, tmp_path: Path):
    out = tmp_path / 'resumed'
    out.mkdir()
    start = out / 'start.safetensors'
    shutil.copy(two_epoch_run / 'last.safetensors', start)
    assert _adam_steps(start) == 2 * STEPS_PER_EPOCH
    assert train.main([*TINY, '--epochs', '3', '--seed', '3', '--loss', 'jetloss+ce', '--resume', str(start),
                       '--output', str(out)]) == 0
    rows = _rows(out / 'log.csv')
    assert [int(r['epoch']) for r in rows] == [1, 2, 3]  # history carried over, one new epoch
    assert load_checkpoint(out / 'last.safetensors')[1].extra['epoch'] == 3
    assert _adam_steps(out / 'last.safetensors') == 3 * STEPS_PER_EPOCH


def test_resume_past_requested_epochs_trains_nothing(two_epoch_run: Path, tmp_path: Path, capsys):
    assert train.main([*TINY, '--epochs', '2', '--resume', str(two_epoch_run / 'last.safetensors'),
                       '--output', str(tmp_path)]) == 0
    assert 'nothing to do' in capsys.readouterr().out
    assert not (tmp_path / 'last.safetensors').exists()


def test_ddp_with_two_cpu_processes_trains_and_rank0_writes_one_checkpoint(tmp_path: Path):
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2',
           '-m', 'jetseg_core.train', *TINY, '--epochs', '1', '--loss', 'ce', '--output', str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '2 processes' in proc.stdout
    assert proc.stdout.count('jetseg-train: epoch 1/1') == 1  # only rank 0 reports and writes
    assert sorted(p.name for p in out.iterdir()) == ['best.safetensors', 'last.safetensors', 'log.csv',
                                                     'training.png']
    meta = load_checkpoint(out / 'last.safetensors')[1]
    assert meta.extra['batch_size'] == 8  # 4 per process x 2 processes
    # 8 scenes over 2 processes with batch 4: one step per process per epoch.
    assert _adam_steps(out / 'last.safetensors') == 1


def test_sigint_during_training_saves_a_resumable_checkpoint(tmp_path: Path):
    out = tmp_path / 'sigint'
    cmd = [sys.executable, '-m', 'jetseg_core.train', *TINY, '--synthetic-scenes', '64', '--epochs', '50',
           '--loss', 'ce', '--output', str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        for line in proc.stdout:  # the handler is installed before this line is printed
            if 'training epochs' in line:
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert 'Traceback' not in stderr
    resume_lines = [ln for ln in stdout.splitlines() if '--resume' in ln]
    assert len(resume_lines) == 1, stdout
    saved = Path(resume_lines[0].split('--resume ')[1].rstrip(')'))
    assert saved.is_file() and saved.parent == out
    done = load_checkpoint(saved)[1].extra['epoch']
    assert train.main([*TINY, '--synthetic-scenes', '64', '--epochs', str(done + 1), '--loss', 'ce',
                       '--resume', str(saved), '--output', str(out)]) == 0
    assert int(_rows(out / 'log.csv')[-1]['epoch']) == done + 1


def test_camvid32_trains_31_classes_without_void(tmp_path: Path):
    from PIL import Image

    from jetseg_core.palettes import CAMVID31, CAMVID32

    rng = np.random.default_rng(0)
    for i in range(4):
        stem = f'0001TP_{i:06d}'
        for folder, array in (('701_StillsRaw_full', rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
                              ('LabeledApproved_full', CAMVID32.colors[rng.integers(0, 32, (64, 64))])):
            (tmp_path / 'data' / folder).mkdir(parents=True, exist_ok=True)
            name = f'{stem}.png' if folder.startswith('701') else f'{stem}_L.png'
            Image.fromarray(array).save(tmp_path / 'data' / folder / name)
    out = tmp_path / 'out'
    assert train.main(['--dataset', 'camvid32', '--data-root', str(tmp_path / 'data'), '--train-split', 'all',
                       '--val-split', 'all', '--size', '64x64', '--batch-size', '2', '--epochs', '1',
                       '--threads', '1', '--workers', '0', '--no-progress', '--output', str(out)]) == 0
    model, meta = load_checkpoint(out / 'last.safetensors')
    assert meta.num_classes == 31 and meta.class_names == list(CAMVID31.class_names)
    assert 'Void' not in meta.class_names
    assert model(torch.zeros(1, 3, 64, 64)).shape[1] == 31


def test_authors_like_decoder_stride_is_trained_stored_and_rebuilt_from_the_checkpoint(tmp_path: Path):
    out = tmp_path / 'stride2'
    assert train.main([*TINY, '--epochs', '1', '--decoder-stride', '2', '--output', str(out)]) == 0
    model, meta = load_checkpoint(out / 'best.safetensors')
    assert meta.decoder_stride == 2 and model.settings.decoder_stride == 2
    with torch.no_grad():
        coarse = model.coarse_logits(torch.zeros(1, 3, 64, 96))
    assert coarse.shape[-2:] == (32, 48)  # 1/2 of the input, where the default decoder gives 1/4


def test_missing_data_root_exits_2_with_one_line(tmp_path: Path, capsys):
    rc = train.main(['--dataset', 'camvid', '--data-root', str(tmp_path / 'nowhere'),
                     '--output', str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and 'nowhere' in err[0] and err[0].startswith('jetseg-train: error:')


def test_bad_arguments_exit_2_with_one_line(capsys):
    bad = (['--size', '32x32'], ['--optimizer', 'lbfgs'], ['--epochs', '0'],
           ['--amp', '--device', 'cpu', *TINY])
    for argv in bad:
        rc = train.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, argv
        assert len(err) == 1 and err[0].startswith('jetseg-train: error:'), (argv, err)


def test_corrupt_resume_checkpoint_exits_2_with_one_line(tmp_path: Path, capsys):
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"not": "json')
    rc = train.main([*TINY, '--resume', str(bad), '--output', str(tmp_path / 'out')])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and str(bad) in err[0] and err[0].startswith('jetseg-train: error:')
    assert not (tmp_path / 'out').exists()


def test_learning_rate_warms_up_then_decays_to_zero():
    for schedule in ('poly', 'cosine'):
        factors = [train.lr_factor(s / 100, 0.1, schedule) for s in range(101)]
        assert factors[0] == pytest.approx(0.01) and factors[5] == pytest.approx(0.5, abs=0.05)
        assert max(factors) == pytest.approx(factors[10]) and factors[10] > 0.85
        assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
        assert factors[100] == 0.0
