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

The exported network is the plain folded one: the CPU rewrites of jetseg_core.fuse are
PyTorch-specific (exp2 has no ONNX operator; dense 1x1 and undilated convs suit PyTorch's
kernels); ONNX Runtime, OpenVINO and TensorRT fuse the graph themselves.
"""
from __future__ import annotations

import argparse
import io
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jetseg_core.checkpoint import CheckpointError, CheckpointMeta, resolve_checkpoint
from jetseg_core.cli import OneLineParser, UsageError, parse_size, usage_error
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


def _build_engine(prog: str, args: argparse.Namespace) -> int:
    """Build (or find in the cache) the engine a Segmenter with this checkpoint and size will load."""
    from jetseg_core.inference import Segmenter

    model, meta = resolve_checkpoint(args.checkpoint, args.profile)
    if args.size:
        meta.input_size = tuple(args.size)
    lines: list[str] = []
    seg = Segmenter(model, meta, device='auto', backend=args.engine, log=lines.append)
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
    try:
        args = parser.parse_args(argv)
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
    except (UsageError, CheckpointError, ExportError, ValueError) as exc:
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
