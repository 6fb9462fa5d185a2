"""Export a checkpoint for runtimes without our Python code: ``jetseg-export``.

The output format follows the file name: ``.onnx`` ONNX (needs the ``onnx`` package), ``.pt``
TorchScript (trace; always available), ``.pt2`` torch.export program. The exported network is
BN-folded, fp32 and takes a normalised N x 3 x H x W float tensor (``(rgb / 255 - mean) / std``).
What it returns (``--returns``):

  coarse   N x C x H/s x W/s logits before the final upsampling (s = the decoder stride, 4 for
           the shipped profiles): the default for ONNX, what the inference engines run. Take
           the labels as argmax of these upsampled bilinearly (align_corners=False) to H x W.
  logits   N x C x H x W logits (the default for .pt/.pt2).
  labels   N x H x W uint8 class ids (argmax inside the graph).

ONNX is written with a fixed input size (the checkpoint's or ``--size``) or, with
``--dynamic``, any batch, height and width. The checkpoint metadata (classes, colours,
mean/std, input size) travels inside the file as JSON (ONNX metadata ``jetseg_meta.json``, with
``jetseg_returns`` and ``jetseg_output_stride`` beside it; ``jetseg_meta.json`` extra file for
.pt/.pt2). Every ONNX file passes the ONNX checker and is run (ONNX Runtime, else OpenVINO) on
generated street scenes: its labels must equal PyTorch's on at least 99.9 % of the pixels.

The exported network is the plain folded one, which every runtime reads (the OpenVINO engine
the Segmenter caches is built from the CPU-rewritten network instead, see jetseg_core.backends).

int8 (``--int8 --calib-dataset NAME --data-root DIR``): post-training static quantisation of
the graph the CPU engines run (coarse logits, N x h x w x C), with ONNX Runtime's quantize_static:
QDQ format on the dense convolutions (depthwise and grouped ones stay float), int8 weights per
output channel, uint8 activations whose ranges cover 99.99% of the values seen on
``--calib-images`` frames (default 300, spread evenly over ``--calib-split``, default train) of the
named data set, resized and normalised as jetseg-eval does (EvalTransform) at the checkpoint's
input size (or ``--size``). The graph goes into the engine cache (~/.cache/jetseg), under a name
holding the network, the size and the calibration set, where the Segmenter, jetseg-eval and
jetseg-benchmark find it with precision 'int8' (backend onnxruntime or openvino);
``--output FILE.onnx`` also writes a copy there. Its labels are compared with PyTorch's on generated
scenes and the share printed (int8 is not bit-exact: score it with jetseg-eval --precision int8).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jetseg_core.checkpoint import CheckpointError, CheckpointMeta, resolve_checkpoint
from jetseg_core.cli import OneLineParser, UsageError, parse_size, positive_int, usage_error
from jetseg_core.data.datasets import DATASETS, DatasetError
from jetseg_core.fuse import fold_batchnorm

FORMATS = {'.pt': 'TorchScript', '.pt2': 'torch.export', '.onnx': 'ONNX'}
RETURNS = ('coarse', 'logits', 'labels')
META_FILE = 'jetseg_meta.json'
ONNX_OPSET = 17
#: Share of pixels whose labels must equal PyTorch's for an export to pass its check.
MIN_AGREEMENT = 0.999
CHECK_SCENES = 3
_OUTPUT_NAMES = {'coarse': 'coarse_logits', 'logits': 'logits', 'labels': 'labels'}


class ExportError(RuntimeError):
    """The requested format cannot be produced here (missing package, failed check)."""


class ExportGraph(nn.Module):
    """What an exported file computes: the network up to ``returns`` ('coarse', 'logits' or 'labels').

    ``channels_last_output`` transposes the logits to N x h x w x C: the inference engines hand
    that memory to the Segmenter as a channels-last tensor, the layout its class decision reads fastest.
    """

    def __init__(self, net: nn.Module, returns: str = 'coarse', channels_last_output: bool = False) -> None:
        super().__init__()
        if returns not in RETURNS:
            raise ValueError(f"returns must be one of {', '.join(RETURNS)}, got {returns!r}")
        if channels_last_output and returns == 'labels':
            raise ValueError('labels have no channels to move last')
        self.net = net
        self.returns = returns
        self.channels_last_output = channels_last_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net.coarse_logits(x) if self.returns == 'coarse' else self.net(x)
        if self.returns == 'labels':
            return y.argmax(1).to(torch.uint8)
        return y.permute(0, 2, 3, 1) if self.channels_last_output else y


def output_stride(net: nn.Module) -> int:
    """How much smaller than the input the coarse logits are (the decoder stride)."""
    settings = getattr(net, 'settings', None)
    return int(getattr(settings, 'decoder_stride', 1))


def onnx_bytes(net: nn.Module, input_size: Sequence[int], *, returns: str = 'coarse', dynamic: bool = False,
               dynamic_batch: bool = False, channels_last_output: bool = False,
               meta: CheckpointMeta | None = None) -> bytes:
    """The ONNX model of a BN-folded, eval-mode ``net`` as bytes (nothing written to disk).

    ``dynamic``: any batch, height and width; ``dynamic_batch``: any batch at ``input_size``.
    With ``meta`` (needs the ``onnx`` package) the checkpoint metadata goes into the file.
    """
    graph = ExportGraph(net, returns, channels_last_output).eval()
    h, w = (int(s) for s in input_size)
    example = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    out_name = _OUTPUT_NAMES[returns]
    axes = None
    if dynamic or dynamic_batch:
        spatial = {2: 'height', 3: 'width'} if dynamic else {}
        out_spatial = {}
        if dynamic:
            out_spatial = {1: 'out_height', 2: 'out_width'}
            if not channels_last_output and returns != 'labels':
                out_spatial = {2: 'out_height', 3: 'out_width'}
        axes = {'image': {0: 'batch', **spatial}, out_name: {0: 'batch', **out_spatial}}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')  # the exporters' deprecation and tracer chatter
        # The TorchScript-based exporter: it needs no onnxscript and handles every op of JetSeg.
        torch.onnx.export(graph, (example,), buffer, input_names=['image'], output_names=[out_name],
                          dynamic_axes=axes, opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False)
    data = buffer.getvalue()
    if meta is not None:
        stride = output_stride(net) if returns == 'coarse' else 1
        data = _with_metadata(data, {META_FILE: meta.to_json(), 'jetseg_returns': returns,
                                     'jetseg_output_stride': str(stride),
                                     'jetseg_layout': 'NHWC' if channels_last_output else 'NCHW'})
    return data


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the 'onnx' package (pip install onnx); "
                          'a .pt (TorchScript) or .pt2 output works without it') from None
    return onnx


def _with_metadata(data: bytes, entries: dict[str, str]) -> bytes:
    onnx = _onnx()
    proto = onnx.load_from_string(data)
    for key, value in entries.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def check_scenes(meta: CheckpointMeta, size: Sequence[int], count: int = CHECK_SCENES) -> torch.Tensor:
    """``count`` generated street scenes at ``size``, normalised as the network expects (N x 3 x H x W)."""
    from jetseg_core.data.synthetic import generate_scene

    rgb = np.stack([generate_scene(1000 + i, tuple(size))[0] for i in range(count)])
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.std).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def labels_of(output: torch.Tensor, returns: str, size: Sequence[int], channels_last_output: bool = False
              ) -> torch.Tensor:
    """Class ids (N x H x W) from what an exported graph returned."""
    from jetseg_core.inference import upsampled_labels

    if returns == 'labels':
        return output.to(torch.uint8)
    if channels_last_output:
        output = output.permute(0, 3, 1, 2)
    if returns == 'coarse':
        return upsampled_labels(output.float(), tuple(size))
    return output.max(dim=1).indices.to(torch.uint8)


def label_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of pixels with equal labels."""
    return float((a == b).float().mean())


def _run_onnx(data: bytes, x: np.ndarray) -> tuple[np.ndarray, str] | None:
    """Run an ONNX model on ``x`` with ONNX Runtime, else OpenVINO; None when neither is installed."""
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    if onnxruntime is not None:
        session = onnxruntime.InferenceSession(data, providers=['CPUExecutionProvider'])
        name = session.get_inputs()[0].name
        run, runtime = (lambda one: session.run(None, {name: one})[0]), 'ONNX Runtime'
    else:
        from jetseg_core.backends import BackendUnavailable, _import

        try:
            openvino = _import('openvino')  # without its telemetry, as the engines import it
        except BackendUnavailable:
            return None
        core = openvino.Core()
        compiled = core.compile_model(core.read_model(data), 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})
        run, runtime = (lambda one: np.asarray(compiled(one)[0])), 'OpenVINO'
    # One image at a time: a fixed-size export takes a batch of one.
    return np.concatenate([run(x[i:i + 1]) for i in range(len(x))]), runtime


def check_onnx(data: bytes, net: nn.Module, meta: CheckpointMeta, size: Sequence[int], returns: str,
               channels_last_output: bool = False) -> str | None:
    """Check ONNX bytes against PyTorch on generated scenes at ``size``; the runtime that ran them.

    Raises ExportError below :data:`MIN_AGREEMENT`; None when no runtime is installed to run it.
    """
    x = check_scenes(meta, size)
    reference_graph = ExportGraph(net, returns).eval()
    with torch.inference_mode():
        expected = labels_of(reference_graph(x), returns, size)
    got = _run_onnx(data, x.numpy())
    if got is None:
        return None
    output, runtime = got
    agreement = label_agreement(labels_of(torch.from_numpy(output), returns, size, channels_last_output),
                                expected)
    if agreement < MIN_AGREEMENT:
        raise ExportError(f'{runtime} labels equal PyTorch\'s on only {agreement:.3%} of the pixels of '
                          f'{len(x)} generated scenes at {size[0]}x{size[1]} (need {MIN_AGREEMENT:.1%})')
    return runtime


def export_model(model: nn.Module, meta: CheckpointMeta, output: str | Path,
                 input_size: tuple[int, int] | None = None, fold_bn: bool = True, *,
                 returns: str | None = None, dynamic: bool = False) -> tuple[Path, bool]:
    """Write ``model`` to ``output`` in the format its suffix names.

    ``returns``: 'coarse', 'logits' or 'labels' (default: coarse for ONNX, logits otherwise).
    ``dynamic`` (ONNX only): any batch, height and width. Returns (path, checked): checked is
    False only for ONNX with neither onnxruntime nor openvino installed to run it.
    """
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"output must end in {', '.join(FORMATS)}, got '{output.name}'")
    returns = returns or ('coarse' if suffix == '.onnx' else 'logits')
    if returns not in RETURNS:
        raise ValueError(f"returns must be one of {', '.join(RETURNS)}, got {returns!r}")
    if dynamic and suffix != '.onnx':
        raise ValueError('a dynamic input size is for ONNX only (.pt traces serve any size already)')
    net = fold_batchnorm(model) if fold_bn else model
    net = net.eval().float().cpu()
    h, w = input_size or meta.input_size
    output.parent.mkdir(parents=True, exist_ok=True)
    if suffix == '.onnx':
        _onnx()
        data = onnx_bytes(net, (h, w), returns=returns, dynamic=dynamic, meta=meta)
        runtime = check_onnx(data, net, meta, (h, w), returns)
        if dynamic and runtime is not None:  # and at a size it was not traced at
            check_onnx(data, net, meta, (h + 32, w + 64), returns)
        _write(output, data)
        return output, runtime is not None

    graph = ExportGraph(net, returns).eval()
    example = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    extra = {META_FILE: meta.to_json()}
    with torch.inference_mode():
        expected = labels_of(graph(example), returns, (h, w))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TorchScript / exporter deprecation chatter
        if suffix == '.pt':
            with torch.no_grad():
                traced = torch.jit.trace(graph, example, check_trace=False)
            torch.jit.save(traced, str(output), _extra_files=extra)
            run = torch.jit.load(str(output), map_location='cpu')
        else:
            program = torch.export.export(graph, (example,))
            torch.export.save(program, str(output), extra_files=extra)
            run = torch.export.load(str(output)).module()
        with torch.inference_mode():
            got = labels_of(run(example), returns, (h, w))
    if not torch.equal(got, expected):
        raise ExportError(f'{output}: exported program labels differ from PyTorch on the check input')
    return output, True


def _write(path: Path, data: bytes) -> None:
    """Write via a temporary file and a rename: a reader never sees half a model."""
    tmp = path.with_name(f'.{path.name}.partial')
    tmp.write_bytes(data)
    tmp.replace(path)


ENGINE_NAMES = ('openvino', 'onnxruntime', 'tensorrt')

# ----------------------------------------------------------------------------- int8

#: Frames calibrated on by default: a few hundred, as ONNX Runtime and OpenVINO advise.
CALIB_IMAGES = 300
#: ONNX operators quantised; the rest (REU's Exp and Mul, attention, Resize) stay float.
INT8_OPS = ('Conv',)
#: Activation ranges cover this percentile of the calibration frames' values (outliers clipped).
INT8_PERCENTILE = 99.99
#: Frames whose activations the calibrator holds at once, at most.
CALIB_CHUNK = 4


class CalibrationSet:
    """Frames of a data set, resized and normalised as the network sees them (EvalTransform),
    read one at a time; ``identity`` names the set for the engine cache (data set, folder, split,
    size, the files chosen)."""

    def __init__(self, dataset: str, data_root: str | Path | None, size: Sequence[int], meta: CheckpointMeta,
                 count: int = CALIB_IMAGES, split: str = 'train') -> None:
        from jetseg_core.data.datasets import DATASETS, build_dataset

        name = str(dataset).strip().lower()
        if name not in DATASETS:
            raise ValueError(f"unknown calibration dataset '{dataset}'; valid: {', '.join(DATASETS)}")
        if count < 1:
            raise ValueError(f'--calib-images must be at least 1, got {count}')
        h, w = (int(v) for v in size)
        if name == 'synthetic':
            self._data = build_dataset(name, None, split, num_scenes=count, size=(h, w))
            where = 'generated'
        else:
            if data_root is None or str(data_root) == '':
                raise ValueError(f'--calib-dataset {name} needs --data-root')
            self._data = build_dataset(name, data_root, split)
            where = str(Path(data_root).expanduser().resolve())
        n = len(self._data)
        if n == 0:
            raise ValueError(f'{name} {split}: no images to calibrate on')
        self.indices = sorted({int(i) for i in np.linspace(0, n - 1, min(count, n)).round()})
        # ONNX Runtime reads chunks of equal size: the largest that divides the frame count.
        self.chunk = max(c for c in range(1, CALIB_CHUNK + 1) if len(self.indices) % c == 0)
        pairs = getattr(self._data, 'pairs', None)
        files = [str(pairs[i][0].name) for i in self.indices] if pairs is not None else []
        chosen = hashlib.sha256('\n'.join(files).encode()).hexdigest()[:16]
        recipe = f"qdq dense {'+'.join(INT8_OPS)} per-channel 7-bit weights, p{INT8_PERCENTILE}"
        self.identity = f'{name}|{where}|{split}|{h}x{w}|{len(self.indices)} frames|{chosen}|{recipe}'
        self.description = f'{len(self.indices)} {name} {split} frames at {h}x{w}'
        from jetseg_core.data.transforms import EvalTransform

        self._transform = EvalTransform((h, w), mean=tuple(meta.mean), std=tuple(meta.std))

    def __len__(self) -> int:
        return len(self.indices)

    def frame(self, k: int) -> np.ndarray:
        """The ``k``-th frame as a 1 x 3 x H x W float32 array."""
        i = self.indices[k]
        rgb = self._data.load(i)[0] if hasattr(self._data, 'load') else self._data[i][0]
        return self._transform(rgb)[0][None].numpy()

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.frame(k) for k in range(len(self)))


def _reader(frames: CalibrationSet, progress: Callable[[int], None] | None):
    """ONNX Runtime's CalibrationDataReader over ``frames``, in the chunks its strided calibration reads."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.read = 0
            self.set_range(0, len(frames))

        def __len__(self) -> int:
            return len(frames)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._next = iter(range(start_index, min(end_index, len(frames))))

        def get_next(self) -> dict[str, np.ndarray] | None:
            k = next(self._next, None)
            if k is None:
                return None
            self.read += 1
            if progress is not None:
                progress(self.read)
            return {'image': frames.frame(k)}

    return Reader()


def quantize_int8(net: nn.Module, meta: CheckpointMeta, input_size: Sequence[int], frames: CalibrationSet,
                  progress: Callable[[int], None] | None = None) -> bytes:
    """The int8 ONNX graph of a BN-folded network: the engines' graph (coarse logits, N x h x w x C),
    quantised statically on ``frames``, with the checkpoint metadata and the calibration set inside;
    passes the ONNX checker.

    Settings, each measured by label agreement with PyTorch fp32 (shipped synthetic weights, 120x160,
    16 calibration frames, ONNX Runtime / OpenVINO on an AVX2 CPU without VNNI): QDQ convs with
    per-channel int8 weights, uint8 activations, min/max ranges: 74% / 75%; per-tensor weights 90%;
    per-channel with 7-bit weights (``reduce_range``: x86 int8 kernels without VNNI saturate
    16-bit sums of full-range products) 91%; and with the activation ranges cut at the 99.99th
    percentile instead of min/max: 94% / 92% (what is used). Only convs are quantised: REU, attention
    and the resize stay float, and adding Add/Mul changed nothing measurable.

    Only the dense convolutions (group 1) are quantised; the depthwise and grouped ones stay float.
    Measured with OpenVINO on an AVX-512 VNNI CPU at 240x320 against quantising every conv, one / two
    threads: nano 11.2 / 7.0 ms against 12.6 / 8.2 (fp32 10.6 / 6.5), agx 32.4 / 18.5 against
    34.8 / 22.7 (fp32 35.0 / 19.2), workstation 56.5 / 32.9 against 56.5 / 39.0 (fp32 70.9 / 39.4),
    and nano's labels agree with fp32 on 94% of CamVid pixels instead of 89%. A depthwise conv does
    too little arithmetic per value for int8 to repay the quantise and dequantise steps around it.
    """
    onnx = _onnx()
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise ExportError("int8 calibration needs ONNX Runtime's quantisation tools "
                          '(pip install onnxruntime)') from None
    import logging

    size = tuple(int(v) for v in input_size)
    fp32 = onnx_bytes(net, size, returns='coarse', dynamic_batch=True, channels_last_output=True)
    grouped = [node.name for node in onnx.load_from_string(fp32).graph.node
               if node.op_type == 'Conv' and any(a.name == 'group' and a.i > 1 for a in node.attribute)]
    quiet = logging.getLogger()  # the quantiser's advice and progress lines go to the root logger
    level = quiet.level
    with tempfile.TemporaryDirectory(prefix='jetseg-int8-') as tmp:
        source, target = Path(tmp) / 'fp32.onnx', Path(tmp) / 'int8.onnx'
        source.write_bytes(fp32)
        try:
            quiet.setLevel(logging.ERROR)
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter('ignore')
                # Histograms are built CALIB_CHUNK frames at a time: the calibrator holds every
                # activation of the frames of a chunk (~150 MB a frame for nano at 360x480).
                quantize_static(str(source), str(target), _reader(frames, progress),
                                quant_format=QuantFormat.QDQ, op_types_to_quantize=list(INT8_OPS),
                                nodes_to_exclude=grouped,
                                per_channel=True, reduce_range=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.Percentile,
                                extra_options={'CalibPercentile': INT8_PERCENTILE,
                                               'CalibStridedMinMax': frames.chunk})
        finally:
            quiet.setLevel(level)
        proto = onnx.load(str(target))
    entries = {META_FILE: meta.to_json(), 'jetseg_returns': 'coarse', 'jetseg_layout': 'NHWC',
               'jetseg_output_stride': str(output_stride(net)), 'jetseg_precision': 'int8',
               'jetseg_calibration': frames.identity}
    for key, value in entries.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def int8_agreement(data: bytes, net: nn.Module, meta: CheckpointMeta, size: Sequence[int]) -> float | None:
    """Share of pixels of generated scenes where the int8 graph's labels equal PyTorch's fp32 ones
    (None when no runtime is installed to run it)."""
    x = check_scenes(meta, size)
    with torch.inference_mode():
        expected = labels_of(ExportGraph(net, 'coarse').eval()(x), 'coarse', size)
    got = _run_onnx(data, x.numpy())
    if got is None:
        return None
    return label_agreement(labels_of(torch.from_numpy(got[0]), 'coarse', size, channels_last_output=True),
                           expected)


def _export_int8(prog: str, args: argparse.Namespace) -> int:
    """Calibrate the int8 graph, store it in the engine cache (and at --output); optionally build --engine."""
    import time

    from jetseg_core.backends import int8_graph_path, weights_digest

    model, meta = resolve_checkpoint(args.checkpoint, args.profile)
    if args.size:
        meta.input_size = tuple(args.size)
    size = tuple(meta.input_size)
    frames = CalibrationSet(args.calib_dataset, args.data_root, size, meta, args.calib_images,
                            args.calib_split)
    net = fold_batchnorm(model).eval().float().cpu().requires_grad_(False)
    started = time.perf_counter()
    print(f'{prog}: calibrating int8 on {frames.description}', file=sys.stderr)
    data = quantize_int8(net, meta, size, frames)
    took = time.perf_counter() - started
    cached = int8_graph_path(net, size, weights_digest(net), frames.identity)
    cached.parent.mkdir(parents=True, exist_ok=True)
    _write(cached, data)
    agreement = int8_agreement(data, net, meta, size)
    if args.output:
        _write(Path(args.output), data)
    print(f'int8 graph of {meta.profile} at {size[0]}x{size[1]} calibrated on {frames.description} '
          f'in {took:.0f} s: {cached}' + (f' and {args.output}' if args.output else '')
          + ('' if agreement is None else f'; labels equal PyTorch fp32 on {agreement:.2%} of the pixels '
             f'of {CHECK_SCENES} generated scenes')
          + '; run it with precision int8 (backend onnxruntime or openvino)')
    if args.engine:
        return _build_engine(prog, args, precision='int8')
    return 0


def _build_engine(prog: str, args: argparse.Namespace, precision: str = 'auto') -> int:
    """Build (or find in the cache) the engine a Segmenter with this checkpoint and size will load."""
    from jetseg_core.inference import Segmenter

    model, meta = resolve_checkpoint(args.checkpoint, args.profile)
    if args.size:
        meta.input_size = tuple(args.size)
    lines: list[str] = []
    seg = Segmenter(model, meta, device='auto', precision=precision, backend=args.engine, log=lines.append)
    engine = seg.engine
    for line in lines:
        print(f'{prog}: {line}', file=sys.stderr)
    where = getattr(engine, 'cache_path', None)
    h, w = seg.input_size
    print(f'{seg.backend} engine for {meta.profile} at {h}x{w} '
          + (f'ready: {where}' if where else 'ready (ONNX Runtime builds its session at each start)')
          + ('' if lines else ' (already cached)'))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog='jetseg-export', description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', default='',
                        help="checkpoint file, '' for the shipped weights (default) or 'untrained'")
    parser.add_argument('--output', help='model.onnx, model.pt (TorchScript) or model.pt2')
    parser.add_argument('--engine', choices=ENGINE_NAMES, default=None,
                        help='instead of a file: build the engine the Segmenter and the node will load '
                             '(into ~/.cache/jetseg), e.g. a TensorRT engine ahead of the first start')
    parser.add_argument('--profile', default=None,
                        help="profile of the shipped weights, or the expected one of a file's (default: any)")
    parser.add_argument('--size', type=parse_size, default=None,
                        help='HEIGHTxWIDTH of the input (default: the checkpoint input size)')
    parser.add_argument('--returns', choices=RETURNS, default=None,
                        help='coarse logits (ONNX default), full-size logits (.pt/.pt2 default) '
                             'or uint8 labels')
    parser.add_argument('--dynamic', action='store_true', help='ONNX: any batch, height and width')
    parser.add_argument('--no-fold', action='store_true', help='keep BatchNorm layers separate')
    int8 = parser.add_argument_group(
        'int8 (CPU engines)', 'calibrate the int8 graph of --checkpoint at --size into the engine cache '
        '(~/.cache/jetseg), where precision int8 of backend onnxruntime or openvino finds it: '
        "Segmenter(precision='int8'), jetseg-eval --precision int8, jetseg-benchmark --backend "
        'onnxruntime-int8,openvino-int8. --output FILE.onnx writes a copy too; --engine openvino also '
        'compiles its engine ahead of the first start')
    int8.add_argument('--int8', action='store_true',
                      help='post-training static quantisation (needs --calib-dataset)')
    int8.add_argument('--calib-dataset', choices=DATASETS, default=None,
                      help='data set whose frames set the activation ranges (its layout, as jetseg-eval)')
    int8.add_argument('--data-root', type=Path, default=None, help='folder of --calib-dataset')
    int8.add_argument('--calib-split', default='train', help='split to take frames from (default train)')
    int8.add_argument('--calib-images', type=positive_int, default=CALIB_IMAGES,
                      help=f'frames, spread evenly over the split (default {CALIB_IMAGES})')
    try:
        args = parser.parse_args(argv)
        if args.int8:
            if args.calib_dataset is None:
                parser.error('--int8 needs --calib-dataset NAME (and --data-root DIR): the frames it '
                             'calibrates on')
            if args.engine == 'tensorrt':
                parser.error('--int8 is for the CPU engines (openvino, onnxruntime); TensorRT runs fp16')
            if args.output is not None and Path(args.output).suffix.lower() != '.onnx':
                parser.error(f"--int8 writes ONNX: --output must end in .onnx, got '{args.output}'")
            if args.dynamic or args.no_fold or args.returns not in (None, 'coarse'):
                parser.error('--int8 writes the engines\' graph: coarse logits, fixed size, folded '
                             '(no --dynamic, --no-fold or --returns)')
            return _export_int8(parser.prog, args)
        if args.calib_dataset is not None:
            parser.error('--calib-dataset is for --int8')
        if (args.output is None) == (args.engine is None):
            parser.error('give either --output FILE or --engine NAME')
        if args.engine:
            return _build_engine(parser.prog, args)
        suffix = Path(args.output).suffix.lower()
        if suffix not in FORMATS:
            parser.error(f"--output must end in {', '.join(FORMATS)}, got '{args.output}'")
        if args.dynamic and suffix != '.onnx':
            parser.error('--dynamic is for .onnx output only')
        model, meta = resolve_checkpoint(args.checkpoint, args.profile)
        path, checked = export_model(model, meta, args.output, args.size, fold_bn=not args.no_fold,
                                     returns=args.returns, dynamic=args.dynamic)
    except (UsageError, CheckpointError, ExportError, DatasetError, ValueError) as exc:
        return usage_error(parser.prog, str(exc).splitlines()[0] if str(exc) else exc)
    h, w = args.size or meta.input_size
    returns = args.returns or ('coarse' if suffix == '.onnx' else 'logits')
    shape = ('Nx3xHxW, any size' if args.dynamic else f'1x3x{h}x{w}')
    print(f'{path}: {FORMATS[suffix]}, {meta.profile}, {meta.num_classes} classes, returns {returns}, '
          f'input {shape} normalised (mean {list(meta.mean)}, std {list(meta.std)}), '
          + (f'labels checked against PyTorch on generated scenes (>= {MIN_AGREEMENT:.1%} equal)' if checked
             else 'not checked (neither onnxruntime nor openvino installed)'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
