"""Bad data files found by jetseg-train and jetseg-eval: one line naming the file, exit 2, whether
found at start-up, inside a DataLoader worker mid-training or while evaluating; or, with
`--bad-files skip`, skipped with a warning and counted. Real files, real training steps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jetseg_core import evaluate, train
from jetseg_core.checkpoint import load_checkpoint

N_IMAGES = 6
SMALL = ['--dataset', 'folder', '--train-split', 'all', '--val-split', 'all', '--size', '64x64',
         '--batch-size', '2', '--threads', '1', '--no-progress', '--epochs', '1']
pytestmark = [pytest.mark.filterwarnings('ignore:JetLoss class weights span:UserWarning'),
              pytest.mark.forks_workers]


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for folder in ('images', 'masks'):
        (root / folder).mkdir(parents=True)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / 'images' / f'f{i}.png')
        Image.fromarray(rng.integers(0, 11, (64, 64), dtype=np.uint8)).save(root / 'masks' / f'f{i}.png')
    return root


def _put_unknown_id(root: Path) -> Path:
    """Mask f3.png holds the id 50 (the folder palette has 11 classes)."""
    mask = np.zeros((64, 64), np.uint8)
    mask[:8] = 50
    bad = root / 'masks' / 'f3.png'
    Image.fromarray(mask).save(bad)
    return bad


def _cut_image_short(root: Path) -> Path:
    """Image f2.png is cut short (a download that stopped half-way)."""
    bad = root / 'images' / 'f2.png'
    bad.write_bytes(bad.read_bytes()[:200])
    return bad


@pytest.fixture
def unknown_id(tmp_path: Path) -> tuple[Path, Path]:
    root = _folder(tmp_path / 'data')
    return root, _put_unknown_id(root)


@pytest.fixture
def corrupt_image(tmp_path: Path) -> tuple[Path, Path]:
    root = _folder(tmp_path / 'data')
    return root, _cut_image_short(root)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith('jetseg-train: error:') or lines[0].startswith('jetseg-eval: error:'), err
    return lines[0]


def test_unknown_label_id_at_start_up_is_one_line_naming_file_and_id(unknown_id, tmp_path: Path, capsys):
    root, bad = unknown_id
    # JetLoss's class weights count every label pixel before training starts.
    rc = train.main([*SMALL, '--data-root', str(root), '--workers', '0', '--output', str(tmp_path / 'out')])
    line = _one_error_line(capsys)
    assert rc == 2
    assert str(bad) in line and '[50]' in line and '0..10, 255' in line


@pytest.mark.parametrize('workers', [0, 2])
def test_unknown_label_id_found_mid_training_is_one_line_naming_file_and_id(unknown_id, tmp_path: Path,
                                                                            capsys, workers: int):
    root, bad = unknown_id
    # With CE nothing is counted at start-up: the mask is first read by the DataLoader (a worker).
    rc = train.main([*SMALL, '--data-root', str(root), '--loss', 'ce', '--workers', str(workers),
                     '--output', str(tmp_path / 'out')])
    line = _one_error_line(capsys)
    assert rc == 2
    assert str(bad) in line and '[50]' in line


def test_eval_reports_an_unknown_label_id_as_one_line(unknown_id, tmp_path: Path, capsys):
    root, bad = unknown_id
    rc = evaluate.main(['untrained', '--dataset', 'folder', '--data-root', str(root), '--split', 'all',
                        '--size', '64x64', '--threads', '1', '--workers', '2',
                        '--confusion', str(tmp_path / 'cm.png')])
    line = _one_error_line(capsys)
    assert rc == 2
    assert str(bad) in line and '[50]' in line


def test_corrupt_image_stops_training_with_one_line_by_default(corrupt_image, tmp_path: Path, capsys):
    root, bad = corrupt_image
    rc = train.main([*SMALL, '--data-root', str(root), '--loss', 'ce', '--workers', '0',
                     '--output', str(tmp_path / 'out')])
    line = _one_error_line(capsys)
    assert rc == 2
    assert str(bad) in line and 'cannot read image' in line


def test_bad_files_skip_trains_on_warns_once_per_file_and_counts(tmp_path: Path, capsys):
    root = _folder(tmp_path / 'data')
    bad_image, bad_mask = _cut_image_short(root), _put_unknown_id(root)
    out = tmp_path / 'out'
    rc = train.main([*SMALL, '--data-root', str(root), '--bad-files', 'skip', '--workers', '0',
                     '--epochs', '2', '--output', str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith('jetseg-train: warning: skipped')]
    # Each file once, although both are met in each of 2 epochs of training and of validation.
    assert len(warnings) == 2, err
    assert any(str(bad_mask) in w and '[50]' in w for w in warnings)
    assert any(str(bad_image) in w for w in warnings)
    assert load_checkpoint(out / 'last.safetensors')[1].extra['skipped_files'] == 2
