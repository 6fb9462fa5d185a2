"""Export a checkpoint for runtimes without our Python code: ``python -m jetseg_core.export``.

The output format follows the file name: ``.pt`` TorchScript (trace; always
available), ``.pt2`` torch.export program, ``.onnx`` ONNX (only where the ``onnx``
package is installed). The exported network is BN-folded, fp32, takes a normalised
N x 3 x H x W float tensor and returns N x C x H x W logits; the checkpoint metadata
(classes, colours, mean/std, input size) travels inside the file as JSON
(``jetseg_meta.json`` extra file / ONNX metadata). Every export is checked by
running the exported program and comparing its labels with the PyTorch model's.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

from jetseg_core.checkpoint import CheckpointError, CheckpointMeta, resolve_checkpoint
from jetseg_core.cli import OneLineParser, UsageError, parse_size, usage_error
from jetseg_core.fuse import fold_batchnorm

FORMATS = {'.pt': 'TorchScript', '.pt2': 'torch.export', '.onnx': 'ONNX'}
META_FILE = 'jetseg_meta.json'


class ExportError(RuntimeError):
    """The requested format cannot be produced here (missing package, failed check)."""


def export_model(model: torch.nn.Module, meta: CheckpointMeta, output: str | Path,
                 input_size: tuple[int, int] | None = None, fold_bn: bool = True) -> tuple[Path, bool]:
    """Write ``model`` to ``output`` in the format its suffix names.

    Returns (path, checked): checked is False only for ONNX without onnxruntime to run it.
    """
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"output must end in {', '.join(FORMATS)}, got '{output.name}'")
    net = fold_batchnorm(model) if fold_bn else model
    net = net.eval().float().cpu()
    h, w = input_size or meta.input_size
    example = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    output.parent.mkdir(parents=True, exist_ok=True)
    extra = {META_FILE: meta.to_json()}
    with torch.inference_mode():
        expected = net(example).argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TorchScript / exporter deprecation chatter
        if suffix == '.pt':
            with torch.no_grad():
                traced = torch.jit.trace(net, example, check_trace=False)
            torch.jit.save(traced, str(output), _extra_files=extra)
            run = torch.jit.load(str(output), map_location='cpu')
        elif suffix == '.pt2':
            program = torch.export.export(net, (example,))
            torch.export.save(program, str(output), extra_files=extra)
            run = torch.export.load(str(output)).module()
        else:
            return _export_onnx(net, example, output, meta, expected)
        with torch.inference_mode():
            got = run(example).argmax(1)
    if not torch.equal(got, expected):
        raise ExportError(f'{output}: exported program labels differ from PyTorch on the check input')
    return output, True


def _export_onnx(net: torch.nn.Module, example: torch.Tensor, output: Path, meta: CheckpointMeta,
                 expected: torch.Tensor) -> tuple[Path, bool]:
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the 'onnx' package (pip install onnx onnxscript); "
                          'a .pt (TorchScript) or .pt2 output works without it') from None
    torch.onnx.export(net, (example,), str(output), input_names=['image'], output_names=['logits'])
    proto = onnx.load(str(output))
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_FILE, meta.to_json()
    onnx.save(proto, str(output))
    try:
        import onnxruntime
    except ImportError:
        return output, False  # written but not checked: no runtime to run it here
    session = onnxruntime.InferenceSession(str(output), providers=['CPUExecutionProvider'])
    got = torch.from_numpy(session.run(None, {'image': example.numpy()})[0]).argmax(1)
    if (got != expected).float().mean() > 1e-3:
        raise ExportError(f'{output}: ONNX Runtime labels differ from PyTorch on the check input')
    return output, True


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog='python -m jetseg_core.export', description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', required=True,
                        help="checkpoint file, '' for the shipped weights or 'untrained'")
    parser.add_argument('--output', required=True, help='model.pt (TorchScript), model.pt2 or model.onnx')
    parser.add_argument('--profile', default=None, help='expected profile (default: whatever the file holds)')
    parser.add_argument('--size', type=parse_size, default=None,
                        help='HEIGHTxWIDTH to trace at (default: the checkpoint input size)')
    parser.add_argument('--no-fold', action='store_true', help='keep BatchNorm layers separate')
    try:
        args = parser.parse_args(argv)
        if Path(args.output).suffix.lower() not in FORMATS:
            parser.error(f"--output must end in {', '.join(FORMATS)}, got '{args.output}'")
        model, meta = resolve_checkpoint(args.checkpoint, args.profile)
        path, checked = export_model(model, meta, args.output, args.size, fold_bn=not args.no_fold)
    except (UsageError, CheckpointError, ExportError, ValueError) as exc:
        return usage_error(parser.prog, exc)
    h, w = args.size or meta.input_size
    print(f'{path}: {FORMATS[path.suffix.lower()]}, {meta.profile}, {meta.num_classes} classes, '
          f'input 1x3x{h}x{w} normalised (mean {list(meta.mean)}, std {list(meta.std)}), '
          + ('labels checked against PyTorch' if checked else 'not checked (no onnxruntime)'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
