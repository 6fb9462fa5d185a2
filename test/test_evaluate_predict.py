"""jetseg-eval and jetseg-predict on generated scenes, a generated folder and a generated video."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jetseg_core import evaluate, predict
from jetseg_core.checkpoint import shipped_checkpoint
from jetseg_core.data.synthetic import generate_scene
from jetseg_core.palettes import CAMVID11

EVAL_TINY = ['--synthetic-scenes', '3', '--threads', '1', '--batch-size', '3']


def test_eval_prints_iou_table_and_writes_confusion_png_and_json(tiny_checkpoint: Path, tmp_path: Path,
                                                                 capsys):
    png, js = tmp_path / 'cm.png', tmp_path / 'eval.json'
    assert evaluate.main([str(tiny_checkpoint), *EVAL_TINY, '--confusion', str(png), '--json', str(js)]) == 0
    out = capsys.readouterr().out
    for name in CAMVID11.class_names:
        assert name in out
    assert 'mIoU' in out and 'images/s' in out
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert Image.open(png).size[0] >= 400
    result = json.loads(js.read_text())
    matrix = np.array(result['confusion_matrix'])
    assert matrix.shape == (11, 11)
    assert matrix.sum() == 3 * 96 * 128  # every pixel of 3 scenes at the checkpoint's 96x128, none void
    diag = np.diag(matrix).sum() / matrix.sum()
    assert result['pixel_accuracy'] == pytest.approx(diag)
    assert f"{100 * result['miou']:.2f}%" in out
    assert result['images_per_s'] > 0


def test_eval_corrupt_checkpoint_exits_2_with_one_line(tmp_path: Path, capsys):
    bad = tmp_path / 'broken.safetensors'
    bad.write_bytes(b'garbage that is not a checkpoint')
    assert evaluate.main([str(bad), *EVAL_TINY, '--confusion', str(tmp_path / 'cm.png')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'broken.safetensors' in err[0]
    assert not (tmp_path / 'cm.png').exists()


def test_eval_missing_data_root_exits_2(tiny_checkpoint: Path, tmp_path: Path, capsys):
    rc = evaluate.main([str(tiny_checkpoint), '--dataset', 'cityscapes',
                        '--data-root', str(tmp_path / 'nope')])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and 'nope' in err[0]


def _cityscapes_val(root: Path) -> Path:
    """One Cityscapes-layout validation image (19 classes) with its labelIds."""
    stem = 'aachen_000000_000000'
    image = root / 'leftImg8bit' / 'val' / 'aachen' / f'{stem}_leftImg8bit.png'
    labels = root / 'gtFine' / 'val' / 'aachen' / f'{stem}_gtFine_labelIds.png'
    for path in (image, labels):
        path.parent.mkdir(parents=True)
    Image.fromarray(generate_scene(1, (64, 128))[0]).save(image)
    Image.fromarray(np.full((64, 128), 7, np.uint8)).save(labels)  # road
    return root


@pytest.mark.parametrize(('extra', 'problem'), [
    (['--dataset', 'cityscapes', '--split', 'val'], 'cityscapes has 19 classes but the checkpoint predicts'),
    (['--dataset', 'camvid', '--split', 'nonsense'], 'camvid split must be one of'),
    (['--workers', '-1'], "expected a whole number >= 0, got '-1'"),
])
def test_eval_mistakes_exit_2_with_one_line(tiny_checkpoint: Path, tmp_path: Path, capsys, extra, problem):
    root = _cityscapes_val(tmp_path / 'cityscapes')
    rc = evaluate.main([str(tiny_checkpoint), *EVAL_TINY, '--data-root', str(root), *extra,
                        '--confusion', str(tmp_path / 'cm.png')])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and problem in err[0], err


def test_eval_untrained_with_an_unknown_profile_exits_2(capsys):
    assert evaluate.main(['untrained', '--profile', 'tiny', *EVAL_TINY]) == 2
    assert "unknown JetSeg profile 'tiny'" in capsys.readouterr().err


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / 'images'
    folder.mkdir()
    for i, size in enumerate([(120, 160), (90, 200)]):
        Image.fromarray(generate_scene(100 + i, size)[0]).save(folder / f'frame{i}.png')
    (folder / 'notes.txt').write_text('not an image')
    return folder


def test_predict_folder_writes_labels_color_masks_and_overlays(tiny_checkpoint: Path, image_folder: Path,
                                                               tmp_path: Path):
    out = tmp_path / 'out'
    assert predict.main([str(image_folder), '-o', str(out), '--checkpoint', str(tiny_checkpoint),
                         '--threads', '1']) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f'frame{i}_{kind}.png' for i in range(2) for kind in ('labels', 'color', 'overlay'))
    palette = CAMVID11.colors
    for i, (h, w) in enumerate([(120, 160), (90, 200)]):
        labels = Image.open(out / f'frame{i}_labels.png')
        assert labels.mode == 'L' and labels.size == (w, h)
        ids = np.asarray(labels)
        assert ids.max() < 11
        color = np.asarray(Image.open(out / f'frame{i}_color.png').convert('RGB'))
        assert np.array_equal(color, palette[ids])
        overlay = np.asarray(Image.open(out / f'frame{i}_overlay.png').convert('RGB'))
        photo = np.asarray(Image.open(image_folder / f'frame{i}.png').convert('RGB'))
        assert overlay.shape == photo.shape
        assert not np.array_equal(overlay, photo) and not np.array_equal(overlay, color)


def test_predict_video_writes_colour_and_overlay_videos(tiny_checkpoint: Path, tmp_path: Path):
    cv2 = pytest.importorskip('cv2')
    video = tmp_path / 'drive.mp4'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'mp4v'), 10.0, (128, 96))
    assert writer.isOpened()
    for i in range(5):
        writer.write(cv2.cvtColor(generate_scene(i, (96, 128))[0], cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / 'out'
    assert predict.main([str(video), '-o', str(out), '--checkpoint', str(tiny_checkpoint), '--threads', '1',
                         '--max-frames', '3', '--video-labels']) == 0
    for kind in ('color', 'overlay'):
        cap = cv2.VideoCapture(str(out / f'drive_{kind}.mp4'))
        frames = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            assert frame.shape == (96, 128, 3)
            frames += 1
        cap.release()
        assert frames == 3
    frames = sorted(p.name for p in (out / 'drive_labels').iterdir())
    assert frames == ['000000.png', '000001.png', '000002.png']


def test_predict_missing_input_or_corrupt_checkpoint_exits_2(tiny_checkpoint: Path, image_folder: Path,
                                                             tmp_path: Path, capsys):
    assert predict.main([str(tmp_path / 'missing.png'), '--checkpoint', str(tiny_checkpoint)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'missing.png' in err[0]
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'\x00' * 4)
    assert predict.main([str(image_folder), '-o', str(tmp_path / 'o'), '--checkpoint', str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'bad.safetensors' in err[0]


@pytest.mark.skipif(shipped_checkpoint('nano', 'synthetic') is None,
                    reason='no shipped synthetic nano weights in this checkout')
def test_shipped_nano_weights_segment_held_out_synthetic_scenes(tmp_path: Path, capsys):
    js = tmp_path / 'eval.json'
    assert evaluate.main(['--synthetic-scenes', '4', '--threads', '1',
                          '--confusion', str(tmp_path / 'cm.png'), '--json', str(js)]) == 0
    result = json.loads(js.read_text())
    # Without a checkpoint, synthetic scenes are scored with the weights trained on such scenes.
    assert result['checkpoint'] == 'synthetic' and result['input_size'] == [240, 320]
    assert result['miou'] > 0.25  # uniformly random labels score about 0.05; the weights reach ~0.37


def test_16_bit_png_files_are_scaled_to_8_bits_not_clipped(tmp_path: Path):
    # Pillow's convert('RGB') would turn every value above 255 white.
    path = tmp_path / 'depth.png'
    Image.fromarray(np.array([[0, 257, 40000, 65535]], np.uint16)).save(path)
    rgb = predict.read_image(path)
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, :, 0].tolist() == [0, 1, 156, 255] and (rgb == rgb[..., :1]).all()


def test_eval_with_native_labels_scores_upsampled_logits_against_the_stored_labels(tiny_checkpoint: Path,
                                                                                   tmp_path: Path):
    import torch
    import torch.nn.functional as F

    from jetseg_core.checkpoint import load_checkpoint
    from jetseg_core.data.transforms import EvalTransform

    # CamVid (SegNet layout), two test images of different sizes, neither the network's 96x128.
    root = tmp_path / 'camvid'
    pairs = []
    for i, size in enumerate([(120, 160), (90, 150)]):
        rgb, labels = generate_scene(200 + i, size)
        for folder, array in (('test', rgb), ('testannot', labels)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / folder / f'img{i}.png')
        pairs.append((rgb, labels))
    js = tmp_path / 'eval.json'
    assert evaluate.main([str(tiny_checkpoint), '--dataset', 'camvid', '--data-root', str(root),
                          '--native-labels', '--threads', '1', '--batch-size', '2',
                          '--confusion', str(tmp_path / 'cm.png'), '--json', str(js)]) == 0
    result = json.loads(js.read_text())
    assert result['scored_at'] == 'native'

    model, meta = load_checkpoint(tiny_checkpoint)
    expected = np.zeros((11, 11), np.int64)
    transform = EvalTransform(meta.input_size, meta.mean, meta.std)
    with torch.inference_mode():
        for rgb, labels in pairs:
            logits = model(transform(rgb)[0][None])
            pred = F.interpolate(logits, size=labels.shape, mode='bilinear', align_corners=False)[0].argmax(0)
            keep = labels < 11
            np.add.at(expected, (labels[keep], pred.numpy()[keep]), 1)
    assert np.array_equal(np.array(result['confusion_matrix']), expected)
    assert expected.sum() == (pairs[0][1] < 11).sum() + (pairs[1][1] < 11).sum()
