"""Checkpoints: round trips, resuming, and one clear CheckpointError for every broken file."""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from jetseg_core import checkpoint as ckpt
from jetseg_core.checkpoint import (
    SHIPPED_KINDS,
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    read_checkpoint_meta,
    resolve_checkpoint,
    restore_training_state,
    save_checkpoint,
    shipped_checkpoint,
)
from jetseg_core.model import build_model
from jetseg_core.palettes import CAMVID11

torch.set_num_threads(1)


def _meta(profile: str = 'nano', **kw) -> CheckpointMeta:
    return CheckpointMeta.from_palette(profile, CAMVID11, (96, 128), trained_on='unit test', **kw)


@pytest.fixture(scope='module')
def saved(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(1)
    model = build_model('nano', 11).eval()
    path = tmp_path_factory.mktemp('ckpt') / 'nano.safetensors'
    save_checkpoint(path, model, _meta(extra={'epoch': 7, 'miou': 0.25}))
    return path, model


def _tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework='pt') as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_round_trip_restores_weights_outputs_and_metadata(saved):
    path, model = saved
    loaded, meta = load_checkpoint(path, profile='nano', num_classes=11)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    assert meta == _meta(extra={'epoch': 7, 'miou': 0.25})
    assert meta.input_size == (96, 128) and meta.class_names[3] == 'Road'
    assert read_checkpoint_meta(path) == meta


def test_metadata_is_plain_json_in_the_safetensors_header(saved):
    _, metadata = _tensors_and_metadata(saved[0])
    info = json.loads(metadata['jetseg'])
    assert info['profile'] == 'nano' and info['num_classes'] == 11
    assert info['class_colors'][0] == [128, 128, 128] and info['package_version']
    assert metadata['format'] == ckpt.FORMAT


class _Trap:
    """Unpickling this creates a file: proof that something ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_never_unpickles(tmp_path):
    marker = tmp_path / 'unpickled'
    path = tmp_path / 'evil.safetensors'
    with path.open('wb') as f:
        pickle.dump({'model': _Trap(marker)}, f)
    pickle.loads(pickle.dumps(_Trap(tmp_path / 'probe')))  # the trap works when unpickled
    assert (tmp_path / 'probe').exists()
    with pytest.raises(CheckpointError, match='evil.safetensors'):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        read_checkpoint_meta(path)
    with pytest.raises(CheckpointError):
        restore_training_state(path, None)
    with pytest.raises(CheckpointError):
        resolve_checkpoint(str(path), profile=None)
    assert not marker.exists()


def _break_truncated(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])


def _break_short(src: Path, dst: Path) -> None:
    dst.write_bytes(src.read_bytes()[:5])


def _break_random(src: Path, dst: Path) -> None:
    dst.write_bytes(os.urandom(4096))


def _break_header_json(src: Path, dst: Path) -> None:
    body = b'{"model.x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]'  # unterminated
    dst.write_bytes(struct.pack('<Q', len(body)) + body + b'\0' * 4)


def _break_empty(src: Path, dst: Path) -> None:
    dst.write_bytes(b'')


def _rewrite(src: Path, dst: Path, edit) -> None:
    tensors, metadata = _tensors_and_metadata(src)
    edit(tensors, metadata)
    save_file(tensors, str(dst), metadata=metadata)


def _break_missing_tensor(src: Path, dst: Path) -> None:
    _rewrite(src, dst, lambda t, m: t.pop(next(k for k in t if k.endswith('.weight'))))


def _break_shape(src: Path, dst: Path) -> None:
    def edit(t, m):
        key = next(k for k in t if k.endswith('.weight') and t[k].ndim == 4)
        t[key] = torch.zeros(*t[key].shape[:-1], t[key].shape[-1] + 2)
    _rewrite(src, dst, edit)


def _break_no_metadata(src: Path, dst: Path) -> None:
    _rewrite(src, dst, lambda t, m: m.pop('jetseg'))


def _break_metadata_json(src: Path, dst: Path) -> None:
    _rewrite(src, dst, lambda t, m: m.update(jetseg='{"profile": "nano", '))


def _break_metadata_field(src: Path, dst: Path) -> None:
    def edit(t, m):
        info = json.loads(m['jetseg'])
        del info['class_names']
        m['jetseg'] = json.dumps(info)
    _rewrite(src, dst, edit)


def _edit_header(src: Path, dst: Path, edit) -> None:
    """Rewrite the JSON header by hand: entries that save_file would never write."""
    data = src.read_bytes()
    (n,) = struct.unpack('<Q', data[:8])
    header = json.loads(data[8:8 + n])
    edit(header[next(k for k in header if k != '__metadata__')])
    raw = json.dumps(header).encode()  # json writes float('inf') as Infinity, which it reads back
    dst.write_bytes(struct.pack('<Q', len(raw)) + raw + data[8 + n:])


def _break_entry_shape(src: Path, dst: Path) -> None:
    _edit_header(src, dst, lambda entry: entry.update(shape=5))


def _break_entry_offsets(src: Path, dst: Path) -> None:
    _edit_header(src, dst, lambda entry: entry.update(data_offsets=[0, float('inf')]))


def _break_input_size(src: Path, dst: Path) -> None:
    def edit(t, m):
        info = json.loads(m['jetseg'])
        info['input_size'] = [48, 48]  # the network needs 64
        m['jetseg'] = json.dumps(info)
    _rewrite(src, dst, edit)


@pytest.mark.parametrize(('breaker', 'problem'), [
    (_break_entry_shape, 'bad entry'),
    (_break_entry_offsets, 'bad entry'),
    (_break_input_size, 'input_size'),
    (_break_truncated, 'truncated'),
    (_break_short, 'truncated'),
    (_break_empty, 'truncated'),
    (_break_random, 'not a safetensors file'),
    (_break_header_json, 'not JSON'),
    (_break_missing_tensor, 'missing tensor'),
    (_break_shape, 'has shape'),
    (_break_no_metadata, 'not a JetSeg checkpoint'),
    (_break_metadata_json, 'corrupt metadata'),
    (_break_metadata_field, 'class_names'),
])
def test_broken_files_raise_checkpoint_error_naming_file_and_problem(saved, tmp_path, breaker, problem):
    path = tmp_path / 'broken.safetensors'
    breaker(saved[0], path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f'{path}: ')
    assert problem in str(info.value)


def test_missing_file_and_directory_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match='no such file') as info:
        load_checkpoint(tmp_path / 'nope.safetensors')
    assert str(info.value).startswith(str(tmp_path / 'nope.safetensors'))
    with pytest.raises(CheckpointError, match='is a directory, not a regular file'):
        load_checkpoint(tmp_path)


@contextlib.contextmanager
def _no_hang(seconds: int = 20):
    """Fail instead of blocking for ever (opening a FIFO for reading waits for a writer)."""
    def give_up(*_args):
        raise AssertionError(f'still blocked after {seconds} s')

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / 'pipe.safetensors'
    os.mkfifo(path)
    return path


def test_fifo_device_and_directory_are_refused_at_once_saying_what_they_are(tmp_path, fifo):
    cases = [(fifo, 'is a FIFO (named pipe), not a regular file'),
             (Path('/dev/zero'), 'is a character device, not a regular file'),
             (tmp_path, 'is a directory, not a regular file')]
    for path, problem in cases:
        for read in (load_checkpoint, read_checkpoint_meta):
            with _no_hang(), pytest.raises(CheckpointError) as info:
                read(path)
            assert str(info.value) == f'{path}: {problem}'
        with _no_hang(), pytest.raises(CheckpointError, match='not a regular file'):
            restore_training_state(path, None)
        with _no_hang(), pytest.raises(CheckpointError, match='not a regular file'):
            resolve_checkpoint(str(path), profile=None)


def test_file_that_cannot_be_read_or_opened_gives_checkpoint_error():
    # Regular, but every read fails (EIO), even for root: what an unreadable disk block looks like.
    with pytest.raises(CheckpointError, match=r'^/proc/self/mem: cannot read: Input/output error$'):
        load_checkpoint('/proc/self/mem')
    with pytest.raises(CheckpointError, match='cannot open: Not a directory'):
        load_checkpoint('/etc/hostname/model.safetensors')


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads files whatever their mode')
def test_file_without_read_permission_gives_checkpoint_error(saved, tmp_path):
    path = tmp_path / 'locked.safetensors'
    path.write_bytes(saved[0].read_bytes())
    path.chmod(0)
    with pytest.raises(CheckpointError, match='permission denied'):
        load_checkpoint(path)


@pytest.mark.parametrize('target', ['fifo', '/dev/zero', 'directory'])
def test_cli_given_a_checkpoint_that_is_no_file_exits_2_with_one_line(tmp_path, fifo, target):
    # jetseg-export hands --checkpoint straight to the checkpoint reader.
    path = {'fifo': fifo, 'directory': tmp_path}.get(target, target)
    proc = subprocess.run([sys.executable, '-m', 'jetseg_core.export', '--checkpoint', str(path),
                           '--output', str(tmp_path / 'out.pt')], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert f'{path}: is a' in lines[0] and 'not a regular file' in lines[0]
    assert not (tmp_path / 'out.pt').exists()


def test_checkpoint_for_another_profile_or_class_count_is_refused(saved):
    path = saved[0]
    with pytest.raises(CheckpointError, match="profile 'nano', not 'agx'") as info:
        load_checkpoint(path, profile='agx')
    assert str(info.value).startswith(str(path))
    with pytest.raises(CheckpointError, match='11 classes, not 19'):
        load_checkpoint(path, num_classes=19)
    with pytest.raises(CheckpointError, match="not 'agx'"):
        resolve_checkpoint(str(path), 'agx')


def test_save_refuses_metadata_that_contradicts_the_model(tmp_path):
    model = build_model('nano', 11)
    with pytest.raises(ValueError, match='num_classes'):
        save_checkpoint(tmp_path / 'x.safetensors', model,
                        CheckpointMeta('nano', 12, ['c'] * 12, [[0, 0, 0]] * 12, (96, 128)))
    with pytest.raises(ValueError, match='JSON'):
        save_checkpoint(tmp_path / 'x.safetensors', model, _meta(), train_state={'when': object()})
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def _train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x = torch.randn(2, 3, 64, 64, generator=gen)
        y = torch.randint(0, 11, (2, 64, 64), generator=gen)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize('make_optimizer', [
    lambda p: torch.optim.AdamW(p, lr=1e-3, betas=(0.8, 0.95), weight_decay=1e-4),
    lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True),
], ids=['adamw', 'sgd'])
def test_resumed_training_continues_exactly_like_uninterrupted_training(tmp_path, make_optimizer):
    torch.manual_seed(3)
    model = build_model('nano', 11)
    optimizer = make_optimizer(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    _train_steps(model, optimizer, 2, seed=0)
    scheduler.step()
    path = tmp_path / 'resume.safetensors'
    state = {'epoch': 4, 'best_miou': 0.31, 'scheduler': scheduler.state_dict()}
    save_checkpoint(path, model, _meta(), optimizer=optimizer, train_state=state)

    resumed, _ = load_checkpoint(path)
    resumed_opt = make_optimizer(resumed.parameters())
    resumed_sched = torch.optim.lr_scheduler.StepLR(resumed_opt, step_size=1, gamma=0.5)
    got = restore_training_state(path, resumed_opt)
    resumed_sched.load_state_dict(got['scheduler'])
    assert got['epoch'] == 4 and got['best_miou'] == 0.31
    assert resumed_opt.param_groups[0]['lr'] == optimizer.param_groups[0]['lr'] != 0.01
    if 'betas' in optimizer.defaults:
        assert resumed_opt.param_groups[0]['betas'] == (0.8, 0.95)

    _train_steps(model, optimizer, 1, seed=9)
    _train_steps(resumed, resumed_opt, 1, seed=9)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_channels_last_model_and_its_optimiser_save_and_restore(tmp_path):
    """jetseg-train on a CPU trains in channels_last memory, which safetensors cannot write as is."""
    torch.manual_seed(0)
    model = build_model('nano', 11).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters())
    _train_steps(model, optimizer, 1, seed=0)
    assert not all(p.is_contiguous() for p in model.parameters())  # channels_last, not row-major
    path = tmp_path / 'nhwc.safetensors'
    save_checkpoint(path, model, _meta(), optimizer=optimizer, train_state={'epoch': 1})
    loaded, _ = load_checkpoint(path)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    loaded.to(memory_format=torch.channels_last)  # as jetseg-train does after loading
    resumed_opt = torch.optim.AdamW(loaded.parameters())
    assert restore_training_state(path, resumed_opt) == {'epoch': 1}
    _train_steps(model, optimizer, 1, seed=1)
    _train_steps(loaded, resumed_opt, 1, seed=1)
    for a, b in zip(model.parameters(), loaded.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_restore_without_optimizer_state_or_into_another_model_fails_clearly(saved, tmp_path):
    path = saved[0]
    with pytest.raises(CheckpointError, match='no optimiser state'):
        restore_training_state(path, torch.optim.SGD(build_model('nano', 11).parameters(), lr=0.1))
    assert restore_training_state(path, None) == {}

    model = build_model('nano', 11)
    opt = torch.optim.Adam(model.parameters())
    _train_steps(model, opt, 1, seed=0)
    with_opt = tmp_path / 'with_opt.safetensors'
    save_checkpoint(with_opt, model, _meta(), optimizer=opt, train_state={'epoch': 1})
    other = torch.optim.Adam(build_model('agx', 11).parameters())
    with pytest.raises(CheckpointError, match='does not fit') as info:
        restore_training_state(with_opt, other)
    assert str(info.value).startswith(str(with_opt))


def test_untrained_spec_gives_reproducible_camvid11_network():
    model_a, meta = resolve_checkpoint('untrained', 'nano')
    model_b, _ = resolve_checkpoint('untrained', 'nano')
    assert meta.class_names == list(CAMVID11.class_names) and meta.num_classes == 11
    assert meta.input_size == (360, 480) and meta.profile == 'nano'
    pairs = zip(model_a.state_dict().values(), model_b.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_empty_spec_uses_shipped_weights_or_says_how_to_get_them(saved, tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, '_WEIGHTS_DIR', tmp_path)
    assert shipped_checkpoint('nano') is None
    with pytest.raises(CheckpointError, match='untrained') as info:
        resolve_checkpoint('', 'nano')
    assert 'nano_camvid.safetensors' in str(info.value) and 'jetseg-train' in str(info.value)
    (tmp_path / 'nano_synthetic.safetensors').write_bytes(saved[0].read_bytes())
    assert shipped_checkpoint('nano') == tmp_path / 'nano_synthetic.safetensors'
    model, meta = resolve_checkpoint('', 'nano')
    assert meta.extra['epoch'] == 7 and model.num_classes == 11


def test_empty_spec_prefers_the_camvid_weights_and_named_specs_pick_their_kind(saved, tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, '_WEIGHTS_DIR', tmp_path)
    (tmp_path / 'nano_synthetic.safetensors').write_bytes(saved[0].read_bytes())
    with pytest.raises(CheckpointError, match="no camvid weights shipped for profile 'nano'"):
        resolve_checkpoint('camvid', 'nano')
    model, _ = load_checkpoint(saved[0])
    meta = CheckpointMeta.from_palette('nano', CAMVID11, (240, 320), trained_on='camvid train split')
    save_checkpoint(tmp_path / 'nano_camvid.safetensors', model, meta)
    assert shipped_checkpoint('nano') == tmp_path / 'nano_camvid.safetensors'
    assert resolve_checkpoint('', 'nano')[1].trained_on == 'camvid train split'
    assert resolve_checkpoint('camvid', 'nano')[1].trained_on == 'camvid train split'
    assert resolve_checkpoint('synthetic', 'nano')[1].extra['epoch'] == 7


def test_shipped_weights_if_present_load_for_their_profile():
    for profile in ('nano', 'agx', 'workstation'):
        for kind in SHIPPED_KINDS:
            path = shipped_checkpoint(profile, kind)
            if path is None:
                continue
            assert path.name == f'{profile}_{kind}.safetensors'
            _, meta = load_checkpoint(path, profile=profile)
            assert meta.num_classes == len(meta.class_names) == len(meta.class_colors)
