"""jetseg-predict --contact-sheet: input | colour mask | overlay of the images, with the class legend."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from jetseg_core import predict
from jetseg_core.checkpoint import resolve_checkpoint
from jetseg_core.data.synthetic import generate_scene
from jetseg_core.visualize import TILE


def test_contact_sheet_shows_each_image_its_mask_and_its_overlay(tmp_path: Path, capsys):
    for i in range(2):
        rgb, _ = generate_scene(i, (120, 160))
        Image.fromarray(rgb).save(tmp_path / f'scene{i}.png')
    sheet_path = tmp_path / 'out' / 'sheet.png'
    images = [str(tmp_path / 'scene0.png'), str(tmp_path / 'scene1.png')]
    assert predict.main([*images, '-o', str(tmp_path / 'pred'), '--checkpoint', 'synthetic', '--threads', '1',
                         '--backend', 'torch', '--contact-sheet', str(sheet_path)]) == 0
    assert 'contact sheet of 2 images' in capsys.readouterr().out
    sheet = np.asarray(Image.open(sheet_path).convert('RGB'))
    gap, title = 4, 22
    assert sheet.shape[1] == 3 * TILE[1] + 4 * gap
    # The mask tile of the first row holds only palette colours, and the saved colour mask is that picture.
    mask_tile = sheet[title:title + TILE[0], 2 * gap + TILE[1]:2 * gap + 2 * TILE[1]]
    _, meta = resolve_checkpoint('synthetic', 'nano')
    palette = {tuple(c) for c in meta.class_colors}
    assert {tuple(p) for p in mask_tile.reshape(-1, 3)} <= palette
    with Image.open(tmp_path / 'pred' / 'scene0_color.png') as saved:
        color = np.asarray(saved.resize((TILE[1], TILE[0]), Image.NEAREST))
    assert (mask_tile == color).mean() > 0.99
    # Two rows below the title, then the legend.
    assert sheet.shape[0] > title + 2 * (TILE[0] + gap)
