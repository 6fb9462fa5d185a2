"""jetseg-export's ONNX: the BN-folded network up to the coarse logits (or full logits, or labels),
fixed or dynamic size, metadata inside, passing the ONNX checker and labelling like PyTorch."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jetseg_core.checkpoint import CheckpointMeta, load_checkpoint
from jetseg_core.data.synthetic import generate_scene
from jetseg_core.export import ExportError, check_onnx, check_scenes, labels_of, onnx_bytes
from jetseg_core.export import main as export_main
from jetseg_core.fuse import fold_batchnorm
from jetseg_core.inference import Segmenter

onnx = pytest.importorskip('onnx', reason='onnx not installed')
ort = pytest.importorskip('onnxruntime', reason='onnxruntime not installed')


@pytest.fixture(scope='module')
def tiny(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


def _run(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return session.run(None, {'image': x})[0]


def _torch_labels(tiny, rgb: np.ndarray) -> np.ndarray:
    """What the Segmenter's torch path labels at the network size (CPU rewrites, exp2 and all)."""
    return Segmenter(*tiny, device='cpu', backend='torch').segment(rgb).labels


def _normalised(rgb: np.ndarray, meta: CheckpointMeta) -> np.ndarray:
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    return ((x - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)).numpy()


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_default_onnx_is_the_coarse_logits_at_a_fixed_size_with_metadata(tiny_checkpoint, tiny, tmp_path,
                                                                          capsys):
    path = tmp_path / 'nano.onnx'
    assert export_main(['--checkpoint', str(tiny_checkpoint), '--output', str(path)]) == 0
    out = capsys.readouterr().out
    assert 'returns coarse' in out and 'labels checked against PyTorch on generated scenes' in out
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert _dims(proto.graph.input[0]) == [1, 3, 96, 128]
    assert _dims(proto.graph.output[0]) == [1, 11, 24, 32]
    props = {p.key: p.value for p in proto.metadata_props}
    meta = CheckpointMeta.from_dict(json.loads(props['jetseg_meta.json']))
    assert meta.class_names == tiny[1].class_names and meta.input_size == (96, 128)
    keys = ('jetseg_returns', 'jetseg_output_stride', 'jetseg_layout')
    assert [props[k] for k in keys] == ['coarse', '4', 'NCHW']
    assert not any(node.op_type == 'BatchNormalization' for node in proto.graph.node)  # folded
    for seed in range(3):
        rgb = generate_scene(seed, (96, 128))[0]
        x = _normalised(rgb, meta)
        got = labels_of(torch.from_numpy(_run(path, x)), 'coarse', (96, 128))[0].numpy()
        assert (got == _torch_labels(tiny, rgb)).mean() >= 0.999


@pytest.mark.parametrize('returns, shape, dtype', [('logits', (1, 11, 96, 128), np.float32),
                                                   ('labels', (1, 96, 128), np.uint8)])
def test_full_size_logits_and_in_graph_labels(tiny_checkpoint, tiny, tmp_path, returns, shape, dtype):
    path = tmp_path / f'{returns}.onnx'
    args = ['--checkpoint', str(tiny_checkpoint), '--output', str(path), '--returns', returns]
    assert export_main(args) == 0
    rgb = generate_scene(11, (96, 128))[0]
    out = _run(path, _normalised(rgb, tiny[1]))
    assert out.shape == shape and out.dtype == dtype
    labels = out[0] if returns == 'labels' else out[0].argmax(0)
    assert (labels == _torch_labels(tiny, rgb)).mean() >= 0.999


def test_dynamic_onnx_runs_any_batch_and_size(tiny_checkpoint, tiny, tmp_path, capsys):
    path = tmp_path / 'dynamic.onnx'
    assert export_main(['--checkpoint', str(tiny_checkpoint), '--output', str(path), '--dynamic']) == 0
    assert 'any size' in capsys.readouterr().out
    assert _dims(onnx.load(str(path)).graph.input[0]) == ['batch', 3, 'height', 'width']
    model, meta = tiny
    x = check_scenes(meta, (128, 192), count=2)
    out = torch.from_numpy(_run(path, x.numpy()))
    assert out.shape == (2, 11, 32, 48)
    with torch.inference_mode():
        expected = labels_of(fold_batchnorm(model).coarse_logits(x), 'coarse', (128, 192))
    assert (labels_of(out, 'coarse', (128, 192)) == expected).float().mean() >= 0.999


def test_check_rejects_a_graph_that_labels_differently(tiny):
    model, meta = tiny
    net = fold_batchnorm(model).eval()
    other = fold_batchnorm(model).eval()
    with torch.no_grad():
        other.decoder.classifier.weight.mul_(-1.0)  # every decision flips to another class
    data = onnx_bytes(other, meta.input_size)
    with pytest.raises(ExportError, match=r'labels equal PyTorch.s on only .* \(need 99.9%\)'):
        check_onnx(data, net, meta, meta.input_size, 'coarse')
    same = onnx_bytes(net, meta.input_size)
    assert check_onnx(same, net, meta, meta.input_size, 'coarse') == 'ONNX Runtime'


def test_export_cli_rejects_bad_options_in_one_line(tiny_checkpoint, tmp_path, capsys):
    cases = [['--output', str(tmp_path / 'm.pt'), '--dynamic'],
             ['--output', str(tmp_path / 'm.onnx'), '--returns', 'probabilities'],
             ['--output', str(tmp_path / 'm.onnx'), '--size', '10x10']]
    for extra in cases:
        assert export_main(['--checkpoint', str(tiny_checkpoint), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and err.startswith('jetseg-export: error:'), err
    assert not any(tmp_path.iterdir())


def test_engine_is_built_ahead_of_time_into_the_cache_the_segmenter_reads(tiny_checkpoint, tiny, tmp_path,
                                                                          monkeypatch, capsys):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    args = ['--checkpoint', str(tiny_checkpoint), '--engine', 'onnxruntime']
    assert export_main(args) == 0
    captured = capsys.readouterr()
    assert 'onnxruntime-fp32 engine for nano at 96x128 ready' in captured.out
    assert 'exported the network to ONNX' in captured.err
    assert export_main(args) == 0 and '(already cached)' in capsys.readouterr().out
    logs: list[str] = []
    Segmenter(*tiny, device='cpu', backend='onnxruntime', log=logs.append)
    assert logs == []  # found what jetseg-export built
    assert export_main(['--checkpoint', str(tiny_checkpoint)]) == 2
    assert 'either --output FILE or --engine NAME' in capsys.readouterr().err
