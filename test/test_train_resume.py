"""jetseg-train resumes exactly: SIGKILL or Ctrl-C, then --resume, ends with the weights of an
uninterrupted run (real training processes on tiny synthetic scenes, nano at 64x64, one thread)."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jetseg_core import train
from jetseg_core.checkpoint import load_checkpoint, restore_training_state, save_checkpoint

pytestmark = pytest.mark.forks_workers  # in-process training with DataLoader workers
REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
STEPS = 12  # 12 scenes, batch 1
RUN = ['--dataset', 'synthetic', '--synthetic-scenes', str(STEPS), '--synthetic-val-scenes', '2',
       '--size', '64x64', '--batch-size', '1', '--threads', '1', '--no-progress', '--loss', 'ce',
       '--seed', '5', '--lr', '0.004', '--epochs', str(EPOCHS)]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''),
                OMP_NUM_THREADS='1')


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline='') as f:
        return list(csv.DictReader(f))


def assert_same_training_state(ours: Path, reference: Path) -> None:
    """Weights, BatchNorm statistics and AdamW moments all equal (to float tolerance)."""
    a, b = load_file(str(ours)), load_file(str(reference))
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-5, atol=1e-6), key


@pytest.fixture(scope='module')
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run: what every interrupted-then-resumed run must end with."""
    out = tmp_path_factory.mktemp('reference')
    assert train.main([*RUN, '--workers', '0', '--output', str(out)]) == 0
    return out / 'last.safetensors'


def _start(out: Path, workers: int) -> subprocess.Popen:
    # With its progress bar (not --no-progress): the bar tells the test which batch is training.
    run = [a for a in RUN if a != '--no-progress']
    cmd = [sys.executable, '-m', 'jetseg_core.train', *run, '--workers', str(workers), '--output', str(out)]
    return subprocess.Popen(cmd, cwd=out.parent, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


PROGRESS_IN_EPOCH_2 = re.compile(r'epoch 2/\d+:\s*\d+%\|[^|]*\|\s*(\d+)/')


def _interrupt_in_epoch_2(proc: subprocess.Popen, sig: int) -> tuple[str, str]:
    """Send `sig` once the progress bar shows epoch 2 at batch 2 or later (an event, not a guess of
    the machine's speed); the run then stops a few batches into epoch 2."""
    seen = ''
    try:
        while proc.poll() is None:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                break
            seen = (seen + chunk.decode('utf-8', 'replace'))[-4000:]
            batches = [int(n) for n in PROGRESS_IN_EPOCH_2.findall(seen)]
            if batches and max(batches) >= 2:
                break
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
        return stdout, seen + stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize('workers', [0, 2])
def test_sigkill_mid_epoch_then_resume_from_last_checkpoint_matches_an_uninterrupted_run(
        reference: Path, tmp_path: Path, workers: int):
    out = tmp_path / 'killed'
    out.mkdir()
    _interrupt_in_epoch_2(_start(out, workers), signal.SIGKILL)
    last = out / 'last.safetensors'
    done = load_checkpoint(last)[1].extra['epoch']
    assert done == 1, 'killed in epoch 2'
    # The killed epoch is replayed from its start, in the same order with the same augmentation.
    assert train.main([*RUN, '--workers', str(workers), '--resume', str(last), '--output', str(out)]) == 0
    assert [int(r['epoch']) for r in _rows(out / 'log.csv')] == list(range(1, EPOCHS + 1))
    assert_same_training_state(last, reference)


@pytest.mark.slow
@pytest.mark.parametrize('workers', [0, 2])
def test_ctrl_c_mid_epoch_then_resume_from_interrupted_checkpoint_matches_an_uninterrupted_run(
        reference: Path, tmp_path: Path, workers: int):
    out = tmp_path / 'sigint'
    out.mkdir()
    proc = _start(out, workers)
    stdout, stderr = _interrupt_in_epoch_2(proc, signal.SIGINT)
    assert proc.returncode == 130, stderr[-2000:]
    saved = out / 'interrupted.safetensors'
    assert saved.is_file(), stdout
    state = restore_training_state(saved, None)
    assert state['epoch'] == 1 and 2 <= state['batches_done'] < STEPS, stdout
    assert f'after batch {state["batches_done"]}' in stdout
    assert train.main([*RUN, '--workers', str(workers), '--resume', str(saved), '--output', str(out)]) == 0
    assert_same_training_state(out / 'last.safetensors', reference)


def test_epoch_sampler_resumes_an_epoch_where_it_stopped_and_reshuffles_each_epoch():
    sampler = train.EpochSampler(10, seed=7)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, skip=4)
    assert list(sampler) == full[4:] and len(sampler) == 6
    assert sorted(i for i, _ in full) == list(range(10))
    sampler.set_epoch(4)
    assert [i for i, _ in sampler] != [i for i, _ in full]  # a new order (and new draws) every epoch
    assert list(train.EpochSampler(10, seed=7).__iter__()) != full  # epoch 1 is not epoch 3


def test_resumed_run_continues_the_time_budget_and_the_schedule(reference: Path, tmp_path: Path):
    # A checkpoint that has used 98% of a 3-second budget (the time is stored in it).
    start = tmp_path / 'start.safetensors'
    model, meta = load_checkpoint(reference)
    args = train.build_parser().parse_args(['--lr', '0.004'])
    optimizer = train.build_optimizer(model, args)
    state = restore_training_state(reference, optimizer)
    state['elapsed_s'] = 2.95
    save_checkpoint(start, model, meta, optimizer=optimizer, train_state=state)
    out = tmp_path / 'out'
    t0 = time.monotonic()
    assert train.main([*RUN, '--workers', '0', '--epochs', '40', '--time-budget', '0.05',
                       '--resume', str(start), '--output', str(out)]) == 0
    row = _rows(out / 'log.csv')[-1]
    assert int(row['epoch']) == EPOCHS + 1, 'the budget was spent within the first resumed epoch'
    assert float(row['elapsed_s']) >= 3.0
    # Poly at 90% of the budget or later: the rate is at most 0.1^0.9 = 0.126 of the peak.
    assert float(row['lr']) <= 0.13 * 0.004
    assert time.monotonic() - t0 < 60


def test_resume_takes_the_checkpoint_flags_and_refuses_conflicting_ones(reference: Path, tmp_path: Path,
                                                                         capsys):
    base = ['--dataset', 'synthetic', '--synthetic-scenes', str(STEPS), '--synthetic-val-scenes', '2',
            '--threads', '1', '--workers', '0', '--no-progress', '--resume', str(reference)]
    for flag, value in (('--lr', '0.01'), ('--activation', 'tanhexp'), ('--size', '64x96'), ('--seed', '6'),
                        ('--optimizer', 'sgd'), ('--decoder-stride', '2')):
        rc = train.main([*base, '--epochs', str(EPOCHS + 1), flag, value, '--output', str(tmp_path / 'x')])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, flag
        assert len(err) == 1 and err[0].startswith('jetseg-train: error:') and flag in err[0], err
        assert not (tmp_path / 'x').exists()
    # Left out, they come from the checkpoint (lr 0.004, loss ce, seed 5, 64x64), with a note.
    out = tmp_path / 'more'
    assert train.main([*base, '--epochs', str(EPOCHS + 1), '--output', str(out)]) == 0
    note = capsys.readouterr().out
    assert '--lr 0.004' in note and '--loss ce' in note and '--size 64x64' in note
    meta = load_checkpoint(out / 'last.safetensors')[1]
    assert (meta.extra['lr'], meta.extra['loss'], meta.extra['seed']) == (0.004, 'ce', 5)
    assert meta.input_size == (64, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='--amp needs CUDA')
def test_amp_resume_restores_the_loss_scale(tmp_path: Path):
    out = tmp_path / 'amp'
    argv = [*RUN, '--workers', '0', '--amp', '--device', 'cuda', '--output', str(out)]
    argv[argv.index('--epochs') + 1] = '1'
    assert train.main(argv) == 0
    last = out / 'last.safetensors'
    model, meta = load_checkpoint(last)
    optimizer = train.build_optimizer(model, train.build_parser().parse_args(['--lr', '0.004']))
    state = restore_training_state(last, optimizer)
    state['scaler']['scale'] = 1024.0  # as if the scale had backed off from 65536
    save_checkpoint(last, model, meta, optimizer=optimizer, train_state=state)
    argv[argv.index('--epochs') + 1] = '2'
    assert train.main([*argv, '--resume', str(last)]) == 0
    scale = restore_training_state(last, None)['scaler']['scale']
    assert scale <= 1024.0 * 2, scale  # continued from 1024 (may double once), not restarted at 65536


@pytest.mark.parametrize('kind', ['directory', 'fifo', 'device'])
def test_resume_from_something_not_a_file_is_one_line(tmp_path: Path, capsys, kind: str):
    path = {'directory': tmp_path, 'fifo': tmp_path / 'pipe', 'device': Path('/dev/null')}[kind]
    if kind == 'fifo':
        os.mkfifo(path)
    assert train.main(['--resume', str(path), '--output', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('jetseg-train: error:') and str(path) in err[0], err
    assert 'not a regular file' in err[0]
