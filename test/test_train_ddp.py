"""jetseg-train with several processes: ranks agree on why they stop, and each rank (and each
DataLoader worker) draws its own augmentation, reproducibly. Real gloo process groups on CPU."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jetseg_core import train
from jetseg_core.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = ['--dataset', 'synthetic', '--synthetic-scenes', '8', '--synthetic-val-scenes', '2', '--size', '64x96',
        '--batch-size', '2', '--threads', '1', '--workers', '0', '--no-progress', '--loss', 'ce']

pytestmark = pytest.mark.forks_workers  # in-process training with DataLoader workers


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''),
                OMP_NUM_THREADS='1')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


RANK_SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from jetseg_core.train import Dist, agree_to_stop

    rank, port = int(sys.argv[1]), sys.argv[2]
    torch.distributed.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                                         world_size=2)
    dist, cpu = Dist(rank=rank, local_rank=rank, world_size=2), torch.device('cpu')
    cases = [(False, rank == 0),     # only rank 0's clock has reached the budget
             (rank == 1, rank == 0),  # rank 1 got Ctrl-C/SIGTERM while rank 0 ran out of time
             (False, False)]
    print(json.dumps([agree_to_stop(stop, late, 10.0 + rank, dist, cpu) for stop, late in cases]))
    torch.distributed.destroy_process_group()
''')


def test_ranks_agree_on_out_of_time_versus_interrupted():
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, '-c', RANK_SCRIPT, str(rank), port], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    expected = [[False, True, 11.0],   # every rank: out of time (validate, save, exit 0)
                [True, False, 11.0],   # every rank: interrupted (save interrupted.safetensors, exit 130)
                [False, False, 11.0]]  # the largest elapsed time, so every rank sets the same lr
    assert outputs == [expected, expected]


def _identical_images_dataset(root: Path, n: int = 8) -> Path:
    """A folder data set whose images (and masks) are all the same picture: any difference between
    two augmented samples comes from the augmentation draws alone."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    mask = rng.integers(0, 11, (48, 64), dtype=np.uint8)
    for folder in ('images', 'masks'):
        (root / folder).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rgb).save(root / 'images' / f'f{i}.png')
        Image.fromarray(mask).save(root / 'masks' / f'f{i}.png')
    return root


@pytest.mark.parametrize('workers', [0, 2])
def test_each_rank_and_worker_draws_its_own_augmentation_reproducibly(tmp_path: Path, workers: int):
    root = _identical_images_dataset(tmp_path / 'data')
    args = train.build_parser().parse_args([
        '--dataset', 'folder', '--data-root', str(root), '--train-split', 'all', '--val-split', 'all',
        '--size', '64x64', '--batch-size', '2', '--workers', str(workers), '--seed', '3'])
    data = train.build_data(args, need_counts=False)

    def first_batches(rank: int) -> torch.Tensor:
        torch.manual_seed(args.seed)  # what every rank process does at start
        loader, _, sampler = train.make_loaders(data, args, train.Dist(rank, rank, 2), torch.device('cpu'))
        if sampler is not None:
            sampler.set_epoch(1)
        return torch.cat([batch[0] for batch, _ in zip(loader, range(2), strict=False)])

    rank0, rank1 = first_batches(0), first_batches(1)
    assert rank0.shape == rank1.shape == (4, 3, 64, 64)
    assert not torch.equal(rank0, rank1), 'two ranks drew the same scale/crop/flip/jitter'
    assert not torch.equal(rank0[0], rank0[2]), 'two workers drew the same augmentation'
    assert torch.equal(first_batches(0), rank0)  # and again the same: reproducible from the seed


@pytest.mark.slow
def test_torchrun_time_budget_stops_every_rank_as_out_of_time(tmp_path: Path):
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2',
           '-m', 'jetseg_core.train', *TINY, '--epochs', '500', '--time-budget', '0.05', '--output', str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-2000:]
    assert 'time budget of 0.05 min reached' in proc.stdout
    assert not (out / 'interrupted.safetensors').exists()
    meta = load_checkpoint(out / 'last.safetensors')[1]
    assert 1 <= meta.extra['epoch'] < 500
