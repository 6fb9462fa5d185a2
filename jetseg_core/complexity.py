"""Parameters, MACs and the paper's eq. 2 FLOPs of a model, per stage, found by running it once.

The counters hook the leaf modules during one forward pass, so shapes come from the
model itself and are never duplicated here. Conventions:

- MACs: multiply-accumulates of convolutions and fully connected layers (what tools such as
  thop/ptflops report and what the paper calls "FLOPs" in Table 1).
- paper FLOPs (eq. 2): conv Kh*Kw*(Cin/g)*Cout per *output* pixel (= Kh*Kw*Hin*Win*Cin*Cout/(s^2*g)),
  fully connected in*out, pooling one operation per input element read, BatchNorm 4*C*H*W,
  activations and sigmoid gates C*H*W. Interpolation, additions and gating products are not in eq. 2.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import REU, ChannelPool, TanhExp

_ACTIVATIONS = (REU, TanhExp, nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.GELU, nn.Hardswish,
                nn.Hardsigmoid, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.Mish)
_POOLS = (nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool1d,
          nn.MaxPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# Top-level module prefixes of a JetSeg model and the stage name they are reported under.
_JETSEG_STAGES = (('encoder.s0', 'S0'), ('encoder.s1', 'S1'), ('encoder.s2', 'S2'), ('encoder.s3', 'S3'),
                  ('decoder', 'decoder'))


@dataclass
class StageComplexity:
    """Counts of one part of the model."""

    params: int = 0
    macs: int = 0
    flops: int = 0  # paper eq. 2


@dataclass
class ComplexityReport:
    """Per-stage and total counts for one input size (batch 1)."""

    input_size: tuple[int, int]
    stages: dict[str, StageComplexity] = field(default_factory=dict)
    total: StageComplexity = field(default_factory=StageComplexity)

    @property
    def params(self) -> int:
        return self.total.params

    @property
    def macs(self) -> int:
        return self.total.macs

    @property
    def flops(self) -> int:
        return self.total.flops

    def format_table(self, title: str = '') -> str:
        """A fixed-width table: stage, params, GMACs, paper GFLOPs, share of MACs."""
        h, w = self.input_size
        lines = [title] if title else []
        lines.append(f'input {h}x{w}, batch 1')
        lines.append(f'{"stage":<10}{"params":>12}{"GMACs":>12}{"GFLOPs(eq.2)":>14}{"MACs %":>9}')
        rows = list(self.stages.items()) + [('total', self.total)]
        for name, s in rows:
            share = 100.0 * s.macs / self.total.macs if self.total.macs else 0.0
            lines.append(f'{name:<10}{s.params:>12,}{s.macs / 1e9:>12.4f}'
                         f'{s.flops / 1e9:>14.4f}{share:>8.1f}%')
        return '\n'.join(lines)


def _numel_per_sample(t: torch.Tensor) -> int:
    return t.numel() // t.shape[0] if t.dim() > 0 and t.shape[0] else t.numel()


def layer_counts(module: nn.Module, inputs: tuple[torch.Tensor, ...],
                 output: torch.Tensor) -> tuple[int, int]:
    """(MACs, paper FLOPs) of one leaf module for one sample, from its actual input and output."""
    x = inputs[0] if inputs else None
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        per_out = kernel * (module.in_channels // module.groups)
        macs = _numel_per_sample(output) * per_out
        return macs, macs
    if isinstance(module, nn.Linear):
        macs = _numel_per_sample(output) * module.in_features
        return macs, macs
    if isinstance(module, _BATCHNORMS):
        return 0, 4 * _numel_per_sample(output)
    if isinstance(module, _ACTIVATIONS):
        return 0, _numel_per_sample(output)
    if isinstance(module, _POOLS):
        if isinstance(module, (nn.AvgPool2d, nn.MaxPool2d, nn.AvgPool1d, nn.MaxPool1d)):
            ks = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,) * (
                output.dim() - 2)
            window = 1
            for k in ks:
                window *= k
            return 0, _numel_per_sample(output) * window
        return 0, _numel_per_sample(x)  # adaptive pooling reads every input element once
    if isinstance(module, ChannelPool):
        return 0, 2 * _numel_per_sample(x)  # mean and max over channels
    return 0, 0


def _stage_of(name: str, prefixes: Sequence[tuple[str, str]]) -> str:
    for prefix, stage in prefixes:
        if name == prefix or name.startswith(prefix + '.'):
            return stage
    return 'other'


def count_complexity(model: nn.Module, input_size: tuple[int, int] = (512, 512),
                     in_channels: int = 3) -> ComplexityReport:
    """Count params, MACs and paper FLOPs of ``model`` for one ``in_channels x H x W`` input.

    JetSeg models are split into S0..S3 and decoder; any other model is reported as one 'model' row.
    """
    h, w = int(input_size[0]), int(input_size[1])
    named = dict(model.named_modules())
    is_jetseg = all(prefix in named for prefix, _ in _JETSEG_STAGES)
    prefixes = _JETSEG_STAGES if is_jetseg else (('', 'model'),)
    stage_names = [s for _, s in prefixes]
    report = ComplexityReport((h, w), {s: StageComplexity() for s in stage_names})

    def stage_for(name: str) -> str:
        return 'model' if not is_jetseg else _stage_of(name, prefixes)

    for pname, p in model.named_parameters():
        stage = stage_for(pname.rsplit('.', 1)[0] if '.' in pname else '')
        report.stages.setdefault(stage, StageComplexity()).params += p.numel()

    handles = []

    def make_hook(stage: str):
        def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            macs, flops = layer_counts(mod, inputs, output)
            entry = report.stages.setdefault(stage, StageComplexity())
            entry.macs += macs
            entry.flops += flops
        return hook

    for name, mod in named.items():
        if len(list(mod.children())) == 0:
            handles.append(mod.register_forward_hook(make_hook(stage_for(name))))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        device = param.device if param is not None else torch.device('cpu')
        with torch.no_grad():
            model(torch.zeros(1, in_channels, h, w, dtype=dtype, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for s in report.stages.values():
        report.total.params += s.params
        report.total.macs += s.macs
        report.total.flops += s.flops
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the per-stage complexity table of a JetSeg profile."""
    from .cli import OneLineParser, UsageError, parse_size, usage_error
    from .model import build_model
    from .profiles import PROFILES

    parser = OneLineParser(prog='jetseg-complexity', description=__doc__.splitlines()[0])
    parser.add_argument('--profile', default='nano', help=f'one of {", ".join(PROFILES)}')
    parser.add_argument('--size', type=parse_size, default=(512, 512),
                        help='input H x W, e.g. 360x480 (default 512x512)')
    parser.add_argument('--classes', type=int, default=11, help='number of classes (2..255, default 11)')
    parser.add_argument('--decoder-stride', type=int, choices=(2, 4), default=None,
                        help='override the decoder resolution (2 = like the authors, 4 = RegSeg, default)')
    try:
        args = parser.parse_args(argv)
        overrides = {} if args.decoder_stride is None else {'decoder_stride': args.decoder_stride}
        model = build_model(args.profile, args.classes, **overrides)
    except (UsageError, ValueError) as exc:
        return usage_error(parser.prog, exc)
    report = count_complexity(model, args.size)
    title = f'JetSeg {args.profile}, {args.classes} classes, decoder stride {model.settings.decoder_stride}'
    print(report.format_table(title))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
