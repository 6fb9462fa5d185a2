#!/usr/bin/env python3
"""Long fuzz run of the frame path (message -> RGB -> labels): >= 10,000 generated cases.

The properties are those of test/test_fuzz_frames.py (the suite runs them with a few hundred
fixed-seed cases); this runs them with many more, on a seed it prints, and reports the number
of cases (decoded / refused / segmented), the time, the peak memory and every finding (a case
that crashed, hung, allocated out of proportion or decoded differently from the reference).
Exit status 1 when there is a finding.

    python scripts/fuzz_frames.py --cases 10000 [--seed N]
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cases', type=int, default=10_000, help='generated cases in all (default 10000)')
    parser.add_argument('--seed', type=int, default=None, help='Hypothesis seed (default: a random one)')
    args = parser.parse_args(argv)
    if args.cases < 3:
        parser.error('--cases must be at least 3')
    return args


def small_segmenter():
    """An untrained nano network at 96x128: the frame path's shapes, not its accuracy, are fuzzed."""
    from jetseg_core.checkpoint import resolve_checkpoint
    from jetseg_core.inference import Segmenter

    model, meta = resolve_checkpoint('untrained', profile='nano')
    meta.input_size = (96, 128)
    return Segmenter(model, meta, device='cpu')


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    os.environ['JETSEG_FUZZ_CASES'] = str(args.cases)
    os.environ['JETSEG_FUZZ_SEED'] = str(seed)
    sys.path[:0] = [str(REPO), str(REPO / 'test')]
    import test_fuzz_frames as fuzz  # reads the two variables above when imported

    segmenter = small_segmenter()
    properties = [
        ('raw images', fuzz.test_raw_images_decode_like_the_reference_or_are_rejected_with_a_reason, ()),
        ('compressed images',
         fuzz.test_compressed_images_decode_like_the_reference_or_are_rejected_with_a_reason, ()),
        ('frames to labels', fuzz.test_fuzzed_frames_that_decode_segment_to_labels_of_their_size,
         (segmenter,)),
    ]
    print(f'fuzz_frames: {args.cases} cases, seed {seed}', flush=True)
    findings: list[str] = []
    started = time.monotonic()
    for name, prop, extra in properties:
        t0 = time.monotonic()
        before = sum(fuzz.OUTCOMES.values())
        try:
            prop(*extra)
        except BaseException as exc:  # noqa: BLE001 - a finding: report it and go on with the others
            if isinstance(exc, KeyboardInterrupt):
                raise
            findings.append(f'{name}: {type(exc).__name__}: {exc}')
        done = sum(fuzz.OUTCOMES.values()) - before
        print(f'  {name:18s} {done:6d} checks in {time.monotonic() - t0:6.1f} s', flush=True)
    elapsed = time.monotonic() - started
    outcomes = dict(sorted(fuzz.OUTCOMES.items()))
    cases = sum(v for k, v in outcomes.items() if k != 'segmented')
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f'cases: {cases} ({", ".join(f"{k} {v}" for k, v in outcomes.items())})')
    print(f'time: {elapsed:.1f} s ({1000 * elapsed / max(cases, 1):.1f} ms per case); '
          f'peak RSS {peak_mib:.0f} MiB; seed {seed}')
    if findings:
        print(f'findings: {len(findings)}')
        for finding in findings:
            print(f'  - {finding}')
        return 1
    print('findings: none')
    return 0


if __name__ == '__main__':
    sys.exit(main())
