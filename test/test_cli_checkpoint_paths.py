"""jetseg-eval and jetseg-predict name what a checkpoint path that is not a file is, in one line."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jetseg_core import evaluate, predict


@pytest.fixture
def not_files(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / 'pipe.safetensors'
    os.mkfifo(fifo)
    folder = tmp_path / 'folder.safetensors'
    folder.mkdir()
    return {'FIFO': fifo, 'directory': folder, 'no such': tmp_path / 'missing.safetensors'}


@pytest.mark.parametrize('kind', ['FIFO', 'directory', 'no such'])
def test_eval_and_predict_say_what_the_checkpoint_path_is(kind, not_files, tmp_path, capsys):
    image = tmp_path / 'frame.png'
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    path = str(not_files[kind])
    assert evaluate.main([path, '--synthetic-scenes', '1']) == 2
    assert predict.main([str(image), '--checkpoint', path, '-o', str(tmp_path / 'out')]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert all(path in line and kind in line for line in lines), lines
