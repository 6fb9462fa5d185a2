"""tune_malloc: freed frame-sized buffers stay in the process instead of faulting in again every frame."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')

# What building an image message does: a 640x480 rgb8 frame, its bytes and a copy of them alive at
# once, then freed; 100 times, counting page faults.
PROBE = r'''
import json, resource, sys
import numpy as np
from jetseg_core.malloc import tune_malloc
applied = tune_malloc() if sys.argv[1] == 'tune' else None
import torch  # the node's process holds torch too: loading it must not undo the setting


def frame_message():
    pixels = np.ones(640 * 480 * 3, np.uint8)
    return len(bytearray(pixels.tobytes()))


frame_message()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    frame_message()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({'applied': applied, 'faults': faults, 'torch_loaded': 'torch' in sys.modules}))
'''
FRAME_PAGES = 640 * 480 * 3 // 4096


def probe(mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, '-c', PROBE, mode], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True, env={**os.environ, 'PYTHONPATH': str(REPO_ROOT), **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuned_malloc_stops_page_faults_per_frame() -> None:
    default = probe('default', GLIBC_TUNABLES='')
    tuned = probe('tune', GLIBC_TUNABLES='')
    assert tuned['applied'] is True
    assert default['faults'] > 50 * FRAME_PAGES  # glibc unmaps and maps the buffers again every time
    assert tuned['faults'] < 5 * FRAME_PAGES, (default, tuned)
    assert tuned['torch_loaded']


def test_users_glibc_tunables_win() -> None:
    result = probe('tune', GLIBC_TUNABLES='glibc.malloc.mmap_threshold=65536')
    assert result['applied'] is False
    assert result['faults'] > 50 * FRAME_PAGES  # the user's fixed mmap threshold still rules
