"""Fixtures shared by the whole suite."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Tests (and the node processes they start with cwd=REPO_ROOT) use the source tree.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope='module')
def module_cache(tmp_path_factory) -> Iterator[Path]:
    """An engine cache (XDG_CACHE_HOME) for one test module, away from the user's; yields cache/jetseg."""
    cache = tmp_path_factory.mktemp('xdg_cache')
    before = os.environ.get('XDG_CACHE_HOME')
    os.environ['XDG_CACHE_HOME'] = str(cache)
    yield cache / 'jetseg'
    if before is None:
        os.environ.pop('XDG_CACHE_HOME', None)
    else:
        os.environ['XDG_CACHE_HOME'] = before


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained nano checkpoint: 11 CamVid classes, network input 96x128 (fast in tests)."""
    import torch

    from jetseg_core.checkpoint import CheckpointMeta, save_checkpoint
    from jetseg_core.model import build_model
    from jetseg_core.palettes import CAMVID11

    torch.manual_seed(0)
    model = build_model('nano', num_classes=len(CAMVID11.class_names))
    # A fresh network's logits are ~1e-4, so its labels would be decided by rounding noise.
    # Spread the batch-norm statistics to get clear, reproducible decisions.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1, generator=generator)
                module.running_var.uniform_(0.05, 0.2, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
    meta = CheckpointMeta(
        profile='nano',
        num_classes=len(CAMVID11.class_names),
        class_names=list(CAMVID11.class_names),
        class_colors=CAMVID11.colors.tolist(),
        input_size=(96, 128),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        trained_on='nothing: random initialisation for tests',
    )
    path = tmp_path_factory.mktemp('checkpoints') / 'nano_tiny.safetensors'
    save_checkpoint(path, model, meta)
    return path
