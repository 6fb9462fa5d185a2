"""Inference backends behind the Segmenter (jetseg_core.backends): real engines on this CPU, their cache,
their thread counts, their errors from the CLIs; TensorRT and torch-CUDA where a GPU is present."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jetseg_core.backends import (
    CPU_ENGINES,
    ENGINES,
    BackendUnavailable,
    backend_available,
    create_engine,
    resolve_backend,
)
from jetseg_core.benchmark import main as benchmark_main
from jetseg_core.checkpoint import load_checkpoint
from jetseg_core.data.synthetic import generate_scene
from jetseg_core.evaluate import main as eval_main
from jetseg_core.fuse import fold_batchnorm
from jetseg_core.inference import Segmenter
from jetseg_core.predict import main as predict_main

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALLED_CPU_ENGINES = [
    pytest.param(name, marks=pytest.mark.skipif(not backend_available(name), reason=f'{name} not installed'))
    for name in CPU_ENGINES]
#: What each engine runs by default: OpenVINO fp32 the CPU-rewritten graph (it runs that faster).
DEFAULT_LABELS = {'openvino': 'openvino-fp32-cpurewrites', 'onnxruntime': 'onnxruntime-fp32'}
UNAVAILABLE = next((name for name in ENGINES if not backend_available(name)), None)
needs_unavailable = pytest.mark.skipif(UNAVAILABLE is None,
                                       reason='every engine is installed and usable here')
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA GPU here')
FRAME_SIZES = [(96, 128), (240, 320), (150, 210)]


# Every test of this module shares one engine cache, away from the user's (conftest.module_cache).
pytestmark = pytest.mark.usefixtures('module_cache')


@pytest.fixture(scope='module')
def tiny(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope='module')
def torch_segmenter(tiny) -> Segmenter:
    return Segmenter(*tiny, device='cpu', backend='torch')


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def _files(folder: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} if folder.is_dir() else {}


# ----------------------------------------------------------------------------- labels


@pytest.mark.parametrize('name', INSTALLED_CPU_ENGINES)
def test_each_installed_engine_labels_like_torch_through_the_segmenter(tiny, torch_segmenter, name):
    seg = Segmenter(*tiny, device='cpu', backend=name)
    assert seg.backend == DEFAULT_LABELS[name] and DEFAULT_LABELS[name] in repr(seg)
    for seed, size in enumerate(FRAME_SIZES):
        rgb = generate_scene(seed, size)[0]
        got = seg.segment(rgb)
        assert got.labels.shape == size and got.inference_ms > 0
        assert _agreement(got.labels, torch_segmenter.segment(rgb).labels) >= 0.999
    frames = [generate_scene(7, s)[0] for s in FRAME_SIZES]
    batch = seg.segment_batch(frames)  # engines run a batch of one at a time: same labels
    for frame, result in zip(frames, batch, strict=True):
        assert np.array_equal(result.labels, seg.segment(frame).labels)
    probs = seg.segment(frames[1], return_probs=True)
    assert probs.probs.shape == (11, *FRAME_SIZES[1])
    assert np.array_equal(probs.labels, probs.probs.argmax(0))


@pytest.mark.parametrize('name', INSTALLED_CPU_ENGINES)
def test_engines_run_the_other_graph_too_when_asked(tiny, torch_segmenter, name):
    rewrites = not DEFAULT_LABELS[name].endswith('-cpurewrites')
    seg = Segmenter(*tiny, device='cpu', backend=name, cpu_rewrites=rewrites)
    assert seg.backend == f'{name}-fp32' + ('-cpurewrites' if rewrites else '')
    grouped_1x1 = any(m.groups > 1 and m.kernel_size == (1, 1) for m in seg.model.modules()
                      if isinstance(m, torch.nn.Conv2d))
    assert grouped_1x1 != rewrites  # what was exported: dense 1x1 convs only with the rewrites
    for seed, size in enumerate(FRAME_SIZES):
        rgb = generate_scene(seed + 20, size)[0]
        assert _agreement(seg.segment(rgb).labels, torch_segmenter.segment(rgb).labels) >= 0.999


@pytest.mark.parametrize('name', INSTALLED_CPU_ENGINES)
def test_engine_returns_the_coarse_logits_in_channels_last_memory(tiny, name):
    model, meta = tiny
    net = fold_batchnorm(model)
    engine = create_engine(name, copy.deepcopy(net), meta.input_size, num_threads=1)
    x = torch.randn(2, 3, *meta.input_size, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = net.coarse_logits(x)
        got = engine(x)
    assert got.shape == expected.shape == (2, 11, 24, 32)
    assert got.permute(0, 2, 3, 1).is_contiguous()  # classes innermost, as the class decision wants
    torch.testing.assert_close(got, expected, atol=2e-4 * float(expected.abs().max()), rtol=1e-4)


def test_auto_picks_openvino_then_onnxruntime_then_torch_on_cpu(tiny):
    expected = next((name for name in CPU_ENGINES if backend_available(name)), 'torch')
    assert resolve_backend('auto', 'cpu') == (expected, 'cpu')
    seg = Segmenter(*tiny, device='cpu')  # backend 'auto' is the default
    assert seg.backend_name == expected
    if not torch.cuda.is_available():
        assert resolve_backend('auto', 'auto') == (expected, 'cpu')


def test_cpu_engines_resolve_device_auto_to_the_cpu_and_refuse_cuda():
    assert resolve_backend('onnxruntime', 'auto') == ('onnxruntime', 'cpu') or UNAVAILABLE == 'onnxruntime'
    with pytest.raises(BackendUnavailable, match="backend 'openvino' runs on the CPU"):
        resolve_backend('openvino', 'cuda')
    with pytest.raises(ValueError, match='unknown backend .tflite.; valid: auto, torch, openvino'):
        resolve_backend('tflite')
    assert resolve_backend(' Torch ', 'cpu') == ('torch', 'cpu')


@needs_unavailable
def test_a_backend_that_cannot_run_here_raises_one_clear_line(tiny):
    with pytest.raises(BackendUnavailable) as caught:
        Segmenter(*tiny, backend=UNAVAILABLE)
    message = str(caught.value)
    assert f"backend '{UNAVAILABLE}'" in message and '\n' not in message
    assert isinstance(caught.value, ValueError)  # the CLIs and the node report ValueErrors in one line


# ----------------------------------------------------------------------------- threads


@pytest.mark.parametrize('name', INSTALLED_CPU_ENGINES)
def test_thread_count_reaches_the_engine_and_can_change(tiny, name):
    seg = Segmenter(*tiny, device='cpu', backend=name, num_threads=1)
    assert seg.threads.count == 1 and seg._engine.runtime_threads == 1
    seg.set_num_threads(2)
    assert seg.threads.count == 2 and seg._engine.runtime_threads == 2
    assert seg.segment(generate_scene(1, (96, 128))[0]).labels.shape == (96, 128)
    seg.set_num_threads(None)  # the profile's best again: 1 for nano on CPU
    assert seg._engine.runtime_threads == 1


# ----------------------------------------------------------------------------- cache


@pytest.mark.parametrize('name', INSTALLED_CPU_ENGINES)
def test_cache_is_reused_and_rebuilt_when_size_or_weights_change(tiny, tmp_path, monkeypatch, name):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    folder = tmp_path / 'jetseg'
    model, meta = tiny
    logs: list[str] = []
    first = Segmenter(model, meta, device='cpu', backend=name, log=logs.append)
    assert any('exported the network to ONNX in' in line for line in logs)
    if name == 'openvino':
        assert any('built the OpenVINO' in line and ' s, cached at ' in line for line in logs)
    built = _files(folder)
    assert len(built) == (2 if name == 'openvino' else 1)
    assert not any(n.endswith('.partial') for n in built)

    logs.clear()
    again = Segmenter(model, meta, device='cpu', backend=name, log=logs.append)
    assert logs == [] and _files(folder) == built  # nothing exported, built or rewritten
    rgb = generate_scene(4, (96, 128))[0]
    assert np.array_equal(again.segment(rgb).labels, first.segment(rgb).labels)

    resized = copy.deepcopy(meta)
    resized.input_size = (64, 96)
    Segmenter(model, resized, device='cpu', backend=name, log=logs.append)
    assert logs and len(_files(folder)) == 2 * len(built)

    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.decoder.classifier.bias.add_(0.5)
    logs.clear()
    Segmenter(changed, meta, device='cpu', backend=name, log=logs.append)
    assert logs and len(_files(folder)) == 3 * len(built)
    assert set(built.items()) <= set(_files(folder).items())  # the first entries are untouched


@pytest.mark.parametrize('name', INSTALLED_CPU_ENGINES)
def test_a_damaged_cache_file_is_built_again(tiny, torch_segmenter, tmp_path, monkeypatch, name):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    Segmenter(*tiny, device='cpu', backend=name)
    for path in (tmp_path / 'jetseg').iterdir():
        path.write_bytes(b'not a model')
    logs: list[str] = []
    seg = Segmenter(*tiny, device='cpu', backend=name, log=logs.append)
    assert any('is unusable' in line for line in logs), logs
    rgb = generate_scene(5, (96, 128))[0]
    assert _agreement(seg.segment(rgb).labels, torch_segmenter.segment(rgb).labels) >= 0.999
    assert all(path.read_bytes() != b'not a model' for path in (tmp_path / 'jetseg').iterdir())


@pytest.mark.parametrize('name', INSTALLED_CPU_ENGINES)
def test_an_unwritable_cache_is_logged_and_the_engine_still_runs(tiny, torch_segmenter, tmp_path, monkeypatch,
                                                                  name):
    blocker = tmp_path / 'not_a_folder'
    blocker.write_text('a file where the cache folder would go')
    monkeypatch.setenv('XDG_CACHE_HOME', str(blocker))
    logs: list[str] = []
    seg = Segmenter(*tiny, device='cpu', backend=name, log=logs.append)
    assert any('cannot write the engine cache' in line for line in logs), logs
    rgb = generate_scene(6, (96, 128))[0]
    assert _agreement(seg.segment(rgb).labels, torch_segmenter.segment(rgb).labels) >= 0.999


def test_relative_xdg_cache_home_is_ignored(monkeypatch):
    from jetseg_core.backends import cache_dir

    monkeypatch.setenv('XDG_CACHE_HOME', 'relative/cache')
    assert cache_dir() == Path.home() / '.cache' / 'jetseg'
    monkeypatch.setenv('XDG_CACHE_HOME', '/somewhere/else')
    assert cache_dir() == Path('/somewhere/else/jetseg')


@pytest.mark.slow
@pytest.mark.skipif(not any(backend_available(n) for n in CPU_ENGINES), reason='no CPU engine installed')
def test_two_processes_building_the_same_engine_at_once_both_succeed(tiny_checkpoint, tmp_path):
    name = next(n for n in CPU_ENGINES if backend_available(n))
    script = textwrap.dedent(f"""
        import numpy as np
        from jetseg_core.data.synthetic import generate_scene
        from jetseg_core.inference import Segmenter
        seg = Segmenter.from_checkpoint({str(tiny_checkpoint)!r}, None, device='cpu', backend={name!r})
        print('labels', int(seg.segment(generate_scene(2, (96, 128))[0]).labels.astype(np.int64).sum()))
    """)
    env = {**os.environ, 'XDG_CACHE_HOME': str(tmp_path), 'PYTHONPATH': str(REPO_ROOT)}
    procs = [subprocess.Popen([sys.executable, '-c', script], cwd=REPO_ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    sums = {line for out, _ in outputs for line in out.splitlines() if line.startswith('labels')}
    assert len(sums) == 1
    names = sorted(p.name for p in (tmp_path / 'jetseg').iterdir())
    assert not any(n.endswith('.partial') for n in names)
    assert len(names) == (2 if name == 'openvino' else 1)


# ----------------------------------------------------------------------------- command lines


@needs_unavailable
def test_clis_report_a_backend_that_cannot_run_here_in_one_line(tiny_checkpoint, tmp_path, capsys):
    image = tmp_path / 'frame.png'
    Image.fromarray(generate_scene(0, (96, 128))[0]).save(image)
    runs = {
        'jetseg-predict': lambda b: predict_main([str(image), '-o', str(tmp_path / 'out'), '--checkpoint',
                                                  str(tiny_checkpoint), '--backend', b]),
        'jetseg-eval': lambda b: eval_main([str(tiny_checkpoint), '--synthetic-scenes', '2', '--backend', b,
                                            '--confusion', str(tmp_path / 'c.png')]),
        'jetseg-benchmark': lambda b: benchmark_main(['--checkpoint', str(tiny_checkpoint),
                                                      '--iterations', '1', '--backend', f'torch,{b}']),
    }
    for prog, run in runs.items():
        assert run(UNAVAILABLE) == 2, prog
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and err.startswith(f'{prog}: error:') and UNAVAILABLE in err, (prog, err)
        assert run('tflite') == 2, prog
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and 'tflite' in err, (prog, err)


@pytest.mark.parametrize('name', INSTALLED_CPU_ENGINES)
def test_predict_runs_the_backend_it_is_given(tiny_checkpoint, tmp_path, capsys, name):
    image = tmp_path / 'frame.png'
    Image.fromarray(generate_scene(3, (120, 160))[0]).save(image)
    assert predict_main([str(image), '-o', str(tmp_path), '--checkpoint', str(tiny_checkpoint),
                         '--backend', name, '--outputs', 'labels']) == 0
    assert f'{DEFAULT_LABELS[name]} on cpu' in capsys.readouterr().out
    labels = np.array(Image.open(tmp_path / 'frame_labels.png'))
    seg = Segmenter.from_checkpoint(str(tiny_checkpoint), None, device='cpu', backend='torch')
    assert _agreement(labels, seg.segment(np.array(Image.open(image))).labels) >= 0.999


@pytest.mark.parametrize('name', INSTALLED_CPU_ENGINES)
def test_eval_scores_an_engine_like_torch(tiny_checkpoint, tmp_path, name):
    scores = {}
    for backend in ('torch', name):
        out = tmp_path / f'{backend}.json'
        assert eval_main([str(tiny_checkpoint), '--synthetic-scenes', '3', '--backend', backend, '--json',
                          str(out), '--confusion', str(tmp_path / f'{backend}.png')]) == 0
        scores[backend] = json.loads(out.read_text())
    assert scores[name]['backend'] == DEFAULT_LABELS[name] and scores['torch']['backend'] == 'torch'
    assert abs(scores[name]['miou'] - scores['torch']['miou']) < 1e-3


def test_benchmark_puts_backends_side_by_side(tiny_checkpoint, capsys):
    installed = [n for n in CPU_ENGINES if backend_available(n)]
    other_graph = [f'{n}+plain' for n in installed[:1]]
    before = torch.get_num_threads()
    try:
        code = benchmark_main(['--checkpoint', str(tiny_checkpoint), '--iterations', '2', '--warmup', '0',
                               '--threads', '1', '--backend', ','.join(['torch', *installed, *other_graph])])
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert code == 0, out
    assert ' params, ' in out and ' GMACs at 96x128' in out and 'p90 ms' in out
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.startswith('      1  ')}
    assert sorted(rows) == sorted(['torch', *installed, *other_graph])  # backends alone: no torch variants
    for row in rows.values():
        assert float(row[-1].rstrip('%')) >= 99.9  # labels equal to torch's


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not backend_available('tensorrt'), reason='tensorrt not installed')
@needs_cuda
def test_tensorrt_labels_like_torch_on_cuda(tiny):
    reference = Segmenter(*tiny, device='cuda', backend='torch')
    seg = Segmenter(*tiny, device='cuda', backend='tensorrt')
    assert seg.backend == f'tensorrt-{reference.precision}'
    assert resolve_backend('auto', 'cuda')[0] == 'tensorrt'
    for seed, size in enumerate(FRAME_SIZES):
        rgb = generate_scene(seed, size)[0]
        assert _agreement(seg.segment(rgb).labels, reference.segment(rgb).labels) >= 0.999


@needs_cuda
def test_torch_cuda_labels_like_torch_on_cpu(tiny, torch_segmenter):
    seg = Segmenter(*tiny, device='cuda', backend='torch', precision='fp32')
    assert seg.device == 'cuda'
    for seed, size in enumerate(FRAME_SIZES):
        rgb = generate_scene(seed, size)[0]
        assert _agreement(seg.segment(rgb).labels, torch_segmenter.segment(rgb).labels) >= 0.999
