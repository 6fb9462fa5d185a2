"""int8 for the CPU engines: jetseg-export --int8 calibrates a QDQ graph on frames of a named data set
into the engine cache; precision 'int8' runs it through the Segmenter, jetseg-eval and jetseg-benchmark
with the same preprocessing and class decision. Real calibration, real engines, generated data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jetseg_core.backends import INT8_ENGINES, BackendUnavailable, backend_available, cache_dir
from jetseg_core.benchmark import _backend_list
from jetseg_core.checkpoint import load_checkpoint, resolve_checkpoint
from jetseg_core.data.synthetic import generate_scene
from jetseg_core.evaluate import main as eval_main
from jetseg_core.export import main as export_main
from jetseg_core.inference import Segmenter

onnx = pytest.importorskip('onnx', reason='onnx not installed')
pytest.importorskip('onnxruntime.quantization', reason='onnxruntime not installed (it calibrates)')

SIZE = (120, 160)  # the shipped synthetic weights, run smaller than their 240x320 to keep tests fast
SIZE_ARG = f'{SIZE[0]}x{SIZE[1]}'
#: Pixels whose int8 labels must equal fp32 torch's on generated scenes, with this module's 10-frame
#: calibration. Measured: ONNX Runtime 96.1%, OpenVINO 92.3% (AVX-512 VNNI CPU, dense convs
#: quantised); every conv quantised gave 91.8% / 90.2% on an AVX2 CPU without VNNI, and the ONNX
#: Runtime default recipe (full-range per-channel weights, min/max ranges) 74%.
MIN_INT8_AGREEMENT = 0.88
INSTALLED_INT8_ENGINES = [
    pytest.param(name, marks=pytest.mark.skipif(not backend_available(name), reason=f'{name} not installed'))
    for name in INT8_ENGINES]


# Every test of this module shares one engine cache, away from the user's (conftest.module_cache).
pytestmark = pytest.mark.usefixtures('module_cache')


@pytest.fixture(scope='module')
def street_folder(tmp_path_factory) -> Path:
    """A data set in the 'folder' layout: generated street scenes as images/*.png + masks/*.png."""
    root = tmp_path_factory.mktemp('streets')
    (root / 'images').mkdir()
    (root / 'masks').mkdir()
    for i in range(10):
        rgb, labels = generate_scene(7000 + i, (240, 320))
        Image.fromarray(rgb).save(root / 'images' / f'scene{i:02d}.png')
        Image.fromarray(labels).save(root / 'masks' / f'scene{i:02d}.png')
    return root


@pytest.fixture(scope='module')
def synthetic():
    model, meta = resolve_checkpoint('synthetic', 'nano')
    meta.input_size = SIZE
    return model, meta


@pytest.fixture(scope='module')
def calibrated(street_folder, module_cache, tmp_path_factory):
    """jetseg-export --int8 on the folder data set: (exit code, --output file, cache files after)."""
    output = tmp_path_factory.mktemp('out') / 'nano_int8.onnx'
    code = export_main(['--int8', '--checkpoint', 'synthetic', '--profile', 'nano', '--size', SIZE_ARG,
                        '--calib-dataset', 'folder', '--data-root', str(street_folder),
                        '--calib-split', 'all',
                        '--output', str(output)])
    return code, output, sorted(module_cache.glob('*graph-int8*.onnx'))


def _scenes(count: int = 3) -> list[np.ndarray]:
    return [generate_scene(9100 + i, SIZE)[0] for i in range(count)]


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


# ----------------------------------------------------------------------------- the graph


def test_int8_export_writes_a_checked_qdq_graph_to_the_cache_and_the_output(calibrated):
    code, output, cached = calibrated
    assert code == 0
    assert len(cached) == 1 and cached[0].read_bytes() == output.read_bytes()
    proto = onnx.load(str(output))
    onnx.checker.check_model(proto, full_check=True)
    ops = [node.op_type for node in proto.graph.node]
    assert 'QuantizeLinear' in ops and 'DequantizeLinear' in ops
    weights = {t.name: t for t in proto.graph.initializer}
    dequantised = {node.output[0]: weights.get(node.input[0])
                   for node in proto.graph.node if node.op_type == 'DequantizeLinear'}
    convs = [node for node in proto.graph.node if node.op_type == 'Conv']
    dense = [node for node in convs if all(a.name != 'group' or a.i == 1 for a in node.attribute)]
    assert 10 < len(dense) < len(convs)
    for node in convs:  # dense convs read int8 weights; depthwise and grouped ones float weights
        if node in dense:
            assert dequantised[node.input[1]].data_type == onnx.TensorProto.INT8, node.name
        else:
            assert weights[node.input[1]].data_type == onnx.TensorProto.FLOAT, node.name
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta['jetseg_precision'] == 'int8' and meta['jetseg_layout'] == 'NHWC'
    assert meta['jetseg_calibration'].startswith(f'folder|{Path(output).anchor}')  # an absolute data root
    assert f'{SIZE_ARG}|10 frames|' in meta['jetseg_calibration']
    assert 'jetseg_meta.json' in meta


def test_int8_export_reports_its_label_agreement(street_folder, capsys, tmp_path):
    code = export_main(['--int8', '--checkpoint', 'synthetic', '--profile', 'nano', '--size', SIZE_ARG,
                        '--calib-dataset', 'folder', '--data-root', str(street_folder),
                        '--calib-split', 'all',
                        '--calib-images', '4'])
    out = capsys.readouterr().out
    assert code == 0
    share = float(out.split('labels equal PyTorch fp32 on ')[1].split('%')[0]) / 100
    assert share >= MIN_INT8_AGREEMENT
    assert 'calibrated on 4 folder all frames at 120x160' in out


# ----------------------------------------------------------------------------- running it


@pytest.mark.parametrize('name', INSTALLED_INT8_ENGINES)
def test_int8_engine_labels_mostly_like_fp32_torch_through_the_segmenter(calibrated, synthetic, name):
    assert calibrated[0] == 0
    int8 = Segmenter(*synthetic, device='cpu', backend=name, precision='int8')
    reference = Segmenter(*synthetic, device='cpu', backend='torch')
    assert int8.backend == f'{name}-int8' and int8.precision == 'int8'
    scenes = _scenes(4)
    got = np.stack([int8.segment(rgb).labels for rgb in scenes])
    expected = np.stack([reference.segment(rgb).labels for rgb in scenes])
    assert got.shape == expected.shape == (len(scenes), *SIZE)
    print(f'{name} int8: {_agreement(got, expected):.2%} of the pixels equal fp32 torch')
    assert _agreement(got, expected) >= MIN_INT8_AGREEMENT
    # Any frame size: the same preprocessing and nearest-neighbour label resize as every backend.
    frame = generate_scene(9200, (200, 260))[0]
    assert int8.segment(frame).labels.shape == (200, 260)


def test_int8_graph_is_read_from_the_cache_on_later_starts(calibrated, synthetic, module_cache):
    assert calibrated[0] == 0
    Segmenter(*synthetic, device='cpu', backend='onnxruntime', precision='int8')
    before = {p.name: p.stat().st_mtime_ns for p in module_cache.iterdir()}
    lines: list[str] = []
    Segmenter(*synthetic, device='cpu', backend='onnxruntime', precision='int8', log=lines.append)
    if backend_available('openvino'):
        Segmenter(*synthetic, device='cpu', backend='openvino', precision='int8')  # builds its blob once
        before = {p.name: p.stat().st_mtime_ns for p in module_cache.iterdir()}
        Segmenter(*synthetic, device='cpu', backend='openvino', precision='int8', log=lines.append)
    assert lines == []  # nothing calibrated, exported or compiled again
    assert {p.name: p.stat().st_mtime_ns for p in module_cache.iterdir()} == before


def test_int8_without_a_calibrated_graph_says_how_to_build_one(tiny_checkpoint):
    model, meta = load_checkpoint(tiny_checkpoint)
    with pytest.raises(BackendUnavailable, match=r'no int8 graph .* jetseg-export --int8 --calib-dataset'
                       ) as info:
        Segmenter(model, meta, device='cpu', backend='onnxruntime', precision='int8')
    assert '\n' not in str(info.value) and str(cache_dir()) in str(info.value)


def test_int8_is_refused_on_the_torch_backend(synthetic):
    with pytest.raises(ValueError, match="precision 'int8' runs on backend openvino or onnxruntime"):
        Segmenter(*synthetic, device='cpu', backend='torch', precision='int8')


def test_eval_scores_the_int8_graph(calibrated, tmp_path, capsys):
    assert calibrated[0] == 0
    code = eval_main(['synthetic', '--backend', 'onnxruntime', '--precision', 'int8', '--size', SIZE_ARG,
                      '--synthetic-scenes', '2', '--batch-size', '2',
                      '--confusion', str(tmp_path / 'cm.png')])
    out = capsys.readouterr().out
    assert code == 0
    assert 'backend onnxruntime-int8' in out and 'mIoU' in out


def test_eval_int8_with_the_torch_backend_is_one_line_and_exit_2(tmp_path, capsys):
    code = eval_main(['synthetic', '--backend', 'torch', '--precision', 'int8', '--synthetic-scenes', '1',
                      '--confusion', str(tmp_path / 'cm.png')])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and '--precision int8 needs --backend' in err


def test_benchmark_takes_int8_engine_rows():
    assert _backend_list('torch,onnxruntime,onnxruntime-int8,openvino-int8') == [
        'torch', 'onnxruntime', 'onnxruntime-int8', 'openvino-int8']
    for bad in ('torch-int8', 'tensorrt-int8', 'auto-int8'):
        with pytest.raises(Exception, match='bad backend list'):
            _backend_list(bad)


# ----------------------------------------------------------------------------- bad options


@pytest.mark.parametrize(('args', 'says'), [
    (['--int8', '--output', 'x.onnx'], '--int8 needs --calib-dataset'),
    (['--int8', '--calib-dataset', 'nosuch', '--output', 'x.onnx'], "invalid choice: 'nosuch'"),
    (['--int8', '--calib-dataset', 'camvid'], '--calib-dataset camvid needs --data-root'),
    (['--int8', '--calib-dataset', 'camvid', '--data-root', '/nonexistent/camvid'], 'dataset root not found'),
    (['--int8', '--calib-dataset', 'synthetic', '--output', 'x.pt'], "--output must end in .onnx"),
    (['--int8', '--calib-dataset', 'synthetic', '--engine', 'tensorrt'], 'CPU engines'),
    (['--calib-dataset', 'synthetic', '--output', 'x.onnx'], '--calib-dataset is for --int8'),
    (['--int8', '--calib-dataset', 'synthetic', '--calib-images', '0'], '--calib-images'),
])
def test_bad_int8_options_are_one_line_and_exit_2(args, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = export_main(args)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and says in lines[0], captured.err
    assert not (tmp_path / 'x.onnx').exists()
