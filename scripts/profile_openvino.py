#!/usr/bin/env python3
"""Where OpenVINO spends its time on the network: its per-layer counters (``PERF_COUNT``) summed by
layer type and kernel, for the graph the Segmenter's OpenVINO fp32 engine runs (BN-folded, CPU
rewrites without exp2, coarse logits).

    python scripts/profile_openvino.py --profile nano --size 360x480 --threads 1
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from jetseg_core.checkpoint import resolve_checkpoint
from jetseg_core.cli import parse_size
from jetseg_core.export import onnx_bytes
from jetseg_core.fuse import fold_batchnorm, rewrite_for_cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--profile', default='nano')
    p.add_argument('--checkpoint', default='untrained')
    p.add_argument('--size', type=parse_size, default=(360, 480), help='network input HxW')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--runs', type=int, default=30, help='profiled runs (after 10 untimed)')
    p.add_argument('--top', type=int, default=12, help='rows per table')
    args = p.parse_args(argv)
    import openvino as ov

    h, w = args.size
    net, _ = resolve_checkpoint(args.checkpoint, args.profile)
    net = fold_batchnorm(net.eval())
    rewrite_for_cpu(net, exp2=False)  # what the Segmenter gives OpenVINOEngine
    core = ov.Core()
    model = core.read_model(onnx_bytes(net, (h, w), returns='coarse', dynamic_batch=True,
                                       channels_last_output=True))
    model.reshape([1, 3, h, w])
    compiled = core.compile_model(model, 'CPU', {'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': 1,
                                                 'INFERENCE_PRECISION_HINT': 'f32', 'PERF_COUNT': True,
                                                 'INFERENCE_NUM_THREADS': args.threads})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((1, 3, h, w), dtype=np.float32)
    for _ in range(10):
        request.infer({0: x})
    by_kind: collections.Counter[str] = collections.Counter()
    by_layer: collections.Counter[str] = collections.Counter()
    for _ in range(args.runs):
        request.infer({0: x})
        for layer in request.profiling_info:
            ms = layer.real_time.total_seconds() * 1e3 / args.runs
            by_kind[f'{layer.node_type} ({layer.exec_type})'] += ms
            by_layer[f'{layer.node_name} ({layer.exec_type})'] += ms
    total = sum(by_kind.values())
    print(f'{args.profile} at {h}x{w}, {args.threads} thread(s): {total:.2f} ms per run in the layers')
    for title, table in (('layer type (kernel)', by_kind), ('layer (kernel)', by_layer)):
        print(f'\n{"ms":>7}  {"share":>5}  {title}')
        for name, ms in table.most_common(args.top):
            print(f'{ms:7.3f}  {100 * ms / total:4.1f}%  {name}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
