"""Segmenter (the one inference path), plus smoke tests of the benchmark and export CLIs."""
from __future__ import annotations

import json
import time
import warnings
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jetseg_core.benchmark import main as benchmark_main
from jetseg_core.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from jetseg_core.export import export_model
from jetseg_core.export import main as export_main
from jetseg_core.inference import Segmentation, Segmenter, nearest_resize, upsampled_labels
from jetseg_core.model import build_model
from jetseg_core.palettes import CAMVID11

torch.set_num_threads(1)
NET = (96, 128)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs plus noise: varied enough that a random network predicts many classes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    rows = np.arange(h) * 6 // h
    cols = np.arange(w) * 8 // w
    img = small[rows[:, None], cols[None, :]].astype(np.int16) + rng.integers(-20, 20, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def calibrated() -> tuple[torch.nn.Module, CheckpointMeta]:
    """A random network with non-identity BatchNorm statistics (so folding really changes weights)."""
    torch.manual_seed(5)
    model = build_model('nano', 11)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # exact average of the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(torch.from_numpy(_image(*NET, seed=i)).permute(2, 0, 1)[None].float() / 64.0 - 2.0)
    model.eval()
    return model, CheckpointMeta.from_palette('nano', CAMVID11, NET, trained_on='unit test')


@pytest.fixture(scope='module')
def calibrated_checkpoint(calibrated, tmp_path_factory):
    path = tmp_path_factory.mktemp('inference') / 'calibrated.safetensors'
    save_checkpoint(path, *calibrated)
    return path


@pytest.fixture(scope='module')
def segmenter(calibrated_checkpoint) -> Segmenter:
    # A freshly initialised JetSeg has logits of ~1e-4 (labels decided by rounding noise);
    # the calibrated one has clear decisions, so label comparisons below mean something.
    return Segmenter.from_checkpoint(str(calibrated_checkpoint), 'nano', device='cpu')


@pytest.mark.parametrize('size', [(96, 128), (50, 70), (241, 333), (480, 640)])
def test_labels_come_back_at_the_input_size(segmenter, size):
    result = segmenter.segment(_image(*size))
    assert isinstance(result, Segmentation)
    assert result.labels.shape == size and result.labels.dtype == np.uint8
    assert result.labels.max() < segmenter.num_classes and result.probs is None
    assert result.preprocess_ms > 0 and result.inference_ms > 0 and result.postprocess_ms > 0
    parts = result.preprocess_ms + result.inference_ms + result.postprocess_ms
    assert result.total_ms == pytest.approx(parts)


def test_labels_are_the_argmax_of_the_network_at_network_size(segmenter, calibrated_checkpoint):
    model, meta = load_checkpoint(calibrated_checkpoint)
    img = _image(*NET, seed=3)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    x = (x - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model(x)[0]
    top2 = logits.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-3  # pixels where float rounding cannot flip the decision
    expected = logits.argmax(0).numpy()
    labels = segmenter.segment(img).labels
    assert clear.float().mean() > 0.95
    assert np.array_equal(labels[clear.numpy()], expected[clear.numpy()])
    assert len(np.unique(labels)) >= 5


def _coarse_logits(n: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Smooth class regions (a few large blobs per class) plus noise, in channels_last like the network's."""
    gen = torch.Generator().manual_seed(seed)
    blobs = torch.randn(n, c, max(h // 6, 2), max(w // 6, 2), generator=gen) * 4
    smooth = F.interpolate(blobs, size=(h, w), mode='bilinear', align_corners=False)
    noisy = smooth + 0.3 * torch.randn(n, c, h, w, generator=gen)
    return noisy.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('factor', [2, 4, 8])
@pytest.mark.parametrize('noise_only', [False, True])
def test_upsampled_labels_equal_the_argmax_of_the_upsampled_logits(factor, noise_only):
    coarse = _coarse_logits(2, 11, 15, 21, seed=factor)  # batch of two, odd coarse sides
    if noise_only:  # every cell mixed: all pixels go through the interpolation path
        coarse = torch.randn(coarse.shape, generator=torch.Generator().manual_seed(1))
    size = (15 * factor, 21 * factor)
    full = F.interpolate(coarse, size=size, mode='bilinear', align_corners=False)
    top2 = full.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4  # float rounding can only flip near-ties
    expected = full.argmax(1)
    labels = upsampled_labels(coarse, size)
    assert labels.shape == (2, *size) and labels.dtype == torch.uint8
    assert clear.float().mean() > 0.99
    assert torch.equal(labels[clear].long(), expected[clear])
    if not noise_only:  # the shortcut was taken somewhere, and boundaries were refined elsewhere
        assert len(torch.unique(expected)) >= 5


@pytest.mark.parametrize('size', [(15, 21), (45, 63), (31, 42), (10, 14)])
def test_upsampled_labels_at_other_sizes_fall_back_to_full_upsampling(size):
    coarse = _coarse_logits(1, 5, 15, 21, seed=3)  # same size, odd factor 3, uneven, smaller
    full = F.interpolate(coarse, size=size, mode='bilinear', align_corners=False)
    assert torch.equal(upsampled_labels(coarse, size).long(), full.argmax(1))


def test_output_size_and_probabilities(segmenter):
    img = _image(*NET, seed=1)
    result = segmenter.segment(img, output_size=(200, 300), return_probs=True)
    assert result.labels.shape == (200, 300)
    assert result.probs.shape == (11, 200, 300) and result.probs.dtype == np.float32
    np.testing.assert_allclose(result.probs.sum(0), 1.0, atol=1e-4)
    assert np.array_equal(result.probs.argmax(0), result.labels)  # one decision, at the output size
    # At network size both paths take the same decision; elsewhere the fast one resizes it.
    at_net = segmenter.segment(img, return_probs=True)
    assert np.array_equal(at_net.labels, segmenter.segment(img).labels)
    fast = segmenter.segment(img, output_size=(200, 300)).labels
    assert np.array_equal(fast, nearest_resize(at_net.labels, (200, 300)))
    assert (fast == result.labels).mean() > 0.9


def test_folded_batchnorm_gives_the_same_labels_as_the_unfolded_model(calibrated):
    model, meta = calibrated
    folded = Segmenter(model, meta, device='cpu', fold_bn=True, backend='torch')
    unfolded = Segmenter(model, meta, device='cpu', fold_bn=False, backend='torch')
    assert 'bnfolded' in folded.backend and 'bnfolded' not in unfolded.backend
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # caller's model untouched
    for seed, size in [(0, NET), (1, (150, 200))]:
        img = _image(*size, seed=seed)
        a, b = folded.segment(img, return_probs=True), unfolded.segment(img, return_probs=True)
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)
        top2 = np.sort(b.probs, axis=0)[-2:]
        clear = (top2[1] - top2[0]) > 1e-3  # not a near-tie that float rounding may flip
        assert clear.mean() > 0.98
        assert np.array_equal(a.labels[clear], b.labels[clear])
        assert (a.labels == b.labels).mean() > 0.995


def test_channels_last_gives_the_same_labels(calibrated):
    model, meta = calibrated
    img = _image(120, 160, seed=4)
    default = Segmenter(model, meta, device='cpu', backend='torch')
    nchw = Segmenter(model, meta, device='cpu', channels_last=False, backend='torch')
    assert default.channels_last and default.backend.endswith('-cl') and not nchw.backend.endswith('-cl')
    assert np.array_equal(default.segment(img).labels, nchw.segment(img).labels)


def test_cpu_rewrites_give_the_same_labels(calibrated):
    model, meta = calibrated
    grouped = Segmenter(model, meta, device='cpu', cpu_rewrites=False, backend='torch')
    dense = Segmenter(model, meta, device='cpu', backend='torch')
    assert dense.cpu_rewrites and '-cpurewrites' in dense.backend and '-cpurewrites' not in grouped.backend
    for seed, size in [(5, NET), (6, (150, 200))]:
        img = _image(*size, seed=seed)
        a, b = dense.segment(img, return_probs=True), grouped.segment(img, return_probs=True)
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
        assert (a.labels == b.labels).mean() > 0.999


def test_torchscript_graph_gives_the_same_numbers_as_eager_pytorch(calibrated):
    model, meta = calibrated
    graph = Segmenter(model, meta, device='cpu', backend='torch')
    eager = Segmenter(model, meta, device='cpu', torchscript=False, backend='torch')
    assert graph.torchscript and graph.backend.startswith('torchscript-')
    assert not eager.torchscript and eager.backend.startswith('torch-')
    # One graph, traced on the first frame, serves other frame sizes and batch sizes.
    for size in [NET, (150, 200), (NET[0] + 8, NET[1] - 8)]:
        img = _image(*size, seed=size[0])
        a, b = graph.segment(img, return_probs=True), eager.segment(img, return_probs=True)
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
        assert np.array_equal(a.labels, b.labels)
    frames = [_image(*NET, seed=7), _image(70, 90, seed=8)]
    for a, b in zip(graph.segment_batch(frames), eager.segment_batch(frames), strict=True):
        assert np.array_equal(a.labels, b.labels)
    assert graph._graph is not None and eager._graph is None
    assert isinstance(graph._labels_of, torch.jit.ScriptFunction)  # the class decision is compiled too


def test_batch_matches_single_frames_of_mixed_sizes(segmenter):
    images = [_image(96, 128, seed=1), _image(200, 150, seed=2), _image(60, 90, seed=3)]
    batch = segmenter.segment_batch(images)
    assert [r.labels.shape for r in batch] == [(96, 128), (200, 150), (60, 90)]
    for img, r in zip(images, batch, strict=True):
        assert np.array_equal(r.labels, segmenter.segment(img).labels)
    assert segmenter.segment_batch([]) == []
    sized = segmenter.segment_batch(images[:2], output_size=(32, 48))
    assert all(r.labels.shape == (32, 48) for r in sized)


def test_buffers_are_reused_without_leaking_between_frames(segmenter):
    a_img, b_img = _image(100, 100, seed=7), _image(100, 100, seed=8)
    first = segmenter.segment(a_img).labels
    ptr = segmenter._inputs[1].data_ptr()
    second = segmenter.segment(b_img).labels
    assert segmenter._inputs[1].data_ptr() == ptr  # same network-input buffer for the next frame
    assert not np.array_equal(first, second)
    assert np.array_equal(first, segmenter.segment(a_img).labels)  # earlier result not overwritten


def test_non_contiguous_frames_are_accepted(segmenter):
    bgr = _image(90, 120, seed=2)
    rgb_view = bgr[:, :, ::-1]
    assert np.array_equal(segmenter.segment(rgb_view).labels,
                          segmenter.segment(np.ascontiguousarray(rgb_view)).labels)


def test_read_only_frames_are_segmented_without_a_warning(segmenter):
    img = _image(90, 120, seed=4)
    frozen = np.frombuffer(img.tobytes(), np.uint8).reshape(img.shape)  # as from a message's bytes
    assert not frozen.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        labels = segmenter.segment(frozen).labels
    assert np.array_equal(labels, segmenter.segment(img).labels)


@pytest.mark.parametrize('factors', [(2, 2), (3, 4), (1, 8), (4, 1), (2, 3), (1.5, 2.5)])
def test_labels_are_upsampled_by_pixel_centre_nearest_neighbour(segmenter, factors):
    # Whole factors with 1, 2, 4 or 8 columns per label take the byte-replicating path; 3 and
    # fractions take the index path. Both must give the pixel-centre nearest neighbour.
    img = _image(*NET, seed=6)
    small = segmenter.segment(img).labels
    size = (int(NET[0] * factors[0]), int(NET[1] * factors[1]))
    rows = ((np.arange(size[0]) + 0.5) * NET[0] / size[0]).astype(int)
    cols = ((np.arange(size[1]) + 0.5) * NET[1] / size[1]).astype(int)
    labels = segmenter.segment(img, output_size=size).labels
    assert labels.shape == size and labels.dtype == np.uint8 and labels.flags.c_contiguous
    assert np.array_equal(labels, small[rows[:, None], cols[None, :]])
    assert len(np.unique(small)) >= 5


@pytest.mark.parametrize('size', [(240, 320), (60, 80), (97, 131), (480, 640)])
def test_nearest_resize_of_a_colour_image_picks_pixel_centres(size):
    # The overlay's base image when outputs are at network size: rows and columns of the input.
    img = _image(180, 250, seed=8)
    rows = ((np.arange(size[0]) + 0.5) * 180 / size[0]).astype(int)
    cols = ((np.arange(size[1]) + 0.5) * 250 / size[1]).astype(int)
    out = nearest_resize(img, size)
    assert out.shape == (*size, 3)
    assert np.array_equal(out, img[rows[:, None], cols[None, :]])
    assert nearest_resize(img, (180, 250)) is img


def _twice(labels: np.ndarray) -> np.ndarray:
    return labels.repeat(2, axis=0).repeat(2, axis=1)


@pytest.mark.parametrize('size', [(2 * NET[0], 2 * NET[1]), (300, 500), (70, 90), NET])
def test_network_input_matches_the_evaluation_transform(segmenter, size):
    """Frames reach the network as in evaluation: bilinear (antialiased when shrinking), normalised."""
    from jetseg_core.data.transforms import EvalTransform

    img = _image(*size, seed=6)
    expected, _ = EvalTransform(NET, segmenter.meta.mean, segmenter.meta.std)(img)
    with torch.inference_mode():
        got = segmenter._preprocess([img])[0]
    one_level = 1.0 / (255 * min(segmenter.meta.std))  # the uint8 resize rounds to whole levels
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= one_level * 1.01


@pytest.mark.parametrize(('bad', 'message'), [
    (np.zeros((64, 64, 3), np.float32), 'uint8'),
    (np.zeros((64, 64), np.uint8), 'HxWx3'),
    (np.zeros((64, 64, 4), np.uint8), 'HxWx3'),
    (np.zeros((0, 64, 3), np.uint8), 'empty'),
])
def test_bad_frames_raise_value_error(segmenter, bad, message):
    with pytest.raises(ValueError, match=message):
        segmenter.segment(bad)


def test_bad_arguments_raise_clear_errors(segmenter, calibrated):
    model, meta = calibrated
    with pytest.raises(TypeError, match='numpy array'):
        segmenter.segment([[1, 2, 3]])
    with pytest.raises(ValueError, match='output_size'):
        segmenter.segment(_image(64, 64), output_size=(0, 10))
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):
        Segmenter(model, meta, device='cpu', precision='fp16')
    with pytest.raises(ValueError, match='unknown precision'):
        Segmenter(model, meta, device='cpu', precision='int3')
    with pytest.raises(ValueError, match='unknown device'):
        Segmenter(model, meta, device='tpu')
    with pytest.raises(ValueError, match='num_threads'):
        Segmenter(model, meta, device='cpu', num_threads=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA is not available'):
            Segmenter(model, meta, device='cuda')


def test_segmenter_describes_itself(segmenter, calibrated):
    assert segmenter.class_names == list(CAMVID11.class_names)
    assert segmenter.palette.shape == (11, 3) and segmenter.palette.dtype == np.uint8
    assert np.array_equal(segmenter.palette, CAMVID11.colors)
    assert segmenter.input_size == NET and segmenter.num_classes == 11 and segmenter.profile == 'nano'
    assert segmenter.device == 'cpu' and segmenter.precision == 'fp32'
    model, meta = calibrated
    torch_path = Segmenter(model, meta, device='cpu', backend='torch')
    assert torch_path.backend == 'torchscript-fp32-bnfolded-cpurewrites-cl'
    before = torch.get_num_threads()
    try:
        Segmenter(model, meta, device='auto', precision='auto', num_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_untrained_segmenter_runs_at_camvid_size():
    seg = Segmenter.from_checkpoint('untrained', 'nano', device='cpu')
    assert seg.input_size == (360, 480) and seg.meta.trained_on.startswith('untrained')
    assert seg.segment(_image(72, 96)).labels.shape == (72, 96)


@pytest.mark.filterwarnings('ignore:.*torch.jit.load. is deprecated')
def test_torchscript_export_gives_identical_labels(calibrated, tmp_path):
    model, meta = calibrated
    path, checked = export_model(model, meta, tmp_path / 'nano.pt')
    assert checked and path.is_file()
    loaded = torch.jit.load(str(path))
    seg = Segmenter(model, meta, device='cpu')
    img = _image(*NET, seed=9)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    x = (x - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)
    with torch.no_grad():
        exported = loaded(x).argmax(1)[0].numpy()
    assert np.array_equal(exported, seg.segment(img).labels)
    with zipfile.ZipFile(path) as z:  # metadata travels inside the file
        name = next(n for n in z.namelist() if n.endswith('extra/jetseg_meta.json'))
        assert json.loads(z.read(name))['class_names'] == list(CAMVID11.class_names)


def test_export_cli_reports_bad_input_in_one_line(tiny_checkpoint, tmp_path, capsys):
    assert export_main(['--checkpoint', str(tiny_checkpoint), '--output', str(tmp_path / 'm.pt')]) == 0
    assert 'labels checked' in capsys.readouterr().out
    assert export_main(['--checkpoint', str(tmp_path / 'missing.safetensors'),
                        '--output', str(tmp_path / 'm.pt')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'missing.safetensors: no such file' in err
    assert export_main(['--checkpoint', str(tiny_checkpoint), '--output', str(tmp_path / 'm.bin')]) == 2
    assert capsys.readouterr().err.count('\n') == 1


def test_benchmark_cli_prints_a_row_per_variant(capsys):
    before = torch.get_num_threads()
    try:
        code = benchmark_main(['--size', '64x96', '--iterations', '2', '--warmup', '0', '--threads', '1'])
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert code == 0
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.startswith('      1  ')}
    assert sorted(rows) == sorted(('eager', 'unfolded', 'folded', 'rewritten', 'graph'))
    assert rows['eager'][5:8] == ['-', '-', '-']  # the plain loop has no stage timings
    for variant in ('unfolded', 'folded', 'rewritten', 'graph'):  # pre, network, post: parts of the whole
        pre, net, post = (float(v) for v in rows[variant][5:8])
        assert 0 < net and 0 <= pre and 0 <= post and pre + net + post <= float(rows[variant][2]) * 1.5
    assert 'peak RSS' in out and 'network 64x96' in out and 'back to back' in out
    assert benchmark_main(['--profile', 'nope', '--iterations', '1']) == 2
    assert 'nope' in capsys.readouterr().err
    assert benchmark_main(['--size', '10x10']) == 2
    assert benchmark_main(['--gap-ms', '-1']) == 2


def test_benchmark_gap_idles_before_each_timed_frame(capsys):
    args = ['--size', '64x96', '--iterations', '4', '--warmup', '0', '--threads', '1',
            '--variants', 'graph,folded']
    before = torch.get_num_threads()

    def seconds(gap_ms: int) -> float:
        started = time.perf_counter()
        assert benchmark_main([*args, '--gap-ms', str(gap_ms)]) == 0
        return time.perf_counter() - started

    try:
        back_to_back, paced = seconds(0), seconds(300)
    finally:
        torch.set_num_threads(before)
    assert '300 ms idle before each' in capsys.readouterr().out
    assert paced - back_to_back >= 0.75 * 8 * 0.3  # 4 timed frames for each of the 2 variants
