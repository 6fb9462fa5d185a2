"""JetSeg checkpoints: safetensors weights plus JSON metadata, never pickle.

A checkpoint is one ``.safetensors`` file. The tensors are the model's state dict
(``model.<name>``) and, when saved for resuming, the optimiser's tensors
(``optimizer.state.<param index>.<name>``). Everything else (profile, classes,
colours, network input size, normalisation, provenance, optimiser hyper-parameters,
epoch, scheduler state) is JSON in the safetensors header metadata, so a checkpoint
can be inspected with any safetensors reader and loading it cannot execute code.

Every way a file can be unusable (missing, truncated, corrupt, for another profile
or class count) raises one exception type, :class:`CheckpointError`, whose message
starts with the file name.
"""
from __future__ import annotations

import json
import math
import os
import stat
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save_file as _st_save_file

from jetseg_core import __version__
from jetseg_core.profiles import MIN_INPUT_SIDE

__all__ = [
    'DEFAULT_INPUT_SIZE', 'DEFAULT_MEAN', 'DEFAULT_STD', 'CheckpointError', 'CheckpointMeta',
    'NAMED_CHECKPOINTS', 'SHIPPED_KINDS', 'load_checkpoint', 'read_checkpoint_meta', 'resolve_checkpoint',
    'restore_training_state', 'save_checkpoint', 'shipped_checkpoint',
]

#: Format tag written into every checkpoint; bumped if the layout ever changes.
FORMAT = 'jetseg-checkpoint/1'
#: ImageNet statistics: the usual normalisation, kept when training from scratch too.
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)
#: CamVid frames are 360x480 (H, W); used by the 'untrained' checkpoint.
DEFAULT_INPUT_SIZE = (360, 480)

_MODEL_PREFIX = 'model.'
_OPT_STATE_PREFIX = 'optimizer.state.'
_OPT_GROUP_PREFIX = 'optimizer.group.'
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_WEIGHTS_DIR = Path(__file__).resolve().parent / 'weights'


class CheckpointError(Exception):
    """A checkpoint file cannot be used; the message is '<file>: <problem>'."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f'{path}: {problem}')
        self.path = str(path)
        self.problem = problem


@dataclass
class CheckpointMeta:
    """Everything needed to run a checkpoint besides its weights."""

    profile: str
    num_classes: int
    class_names: list[str]
    class_colors: list[list[int]]
    input_size: tuple[int, int]  # (H, W) the network was trained at
    mean: tuple[float, float, float] = DEFAULT_MEAN  # RGB in 0..1
    std: tuple[float, float, float] = DEFAULT_STD
    trained_on: str = 'unknown'
    activation: str = 'reu'
    decoder_stride: int = 4  # see JetSegProfile.decoder_stride
    package_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_palette(cls, profile: str, palette: Any, input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
                     **kwargs: Any) -> CheckpointMeta:
        """Metadata for a model trained on a label set from ``jetseg_core.palettes``."""
        return cls(profile=profile, num_classes=len(palette.class_names),
                   class_names=list(palette.class_names),
                   class_colors=[[int(c) for c in rgb] for rgb in palette.colors],
                   input_size=(int(input_size[0]), int(input_size[1])), **kwargs)

    def to_json(self) -> str:
        data = asdict(self)
        data['input_size'] = list(self.input_size)
        data['mean'] = list(self.mean)
        data['std'] = list(self.std)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointMeta:
        """Validate and convert parsed JSON; the ValueError/TypeError says which field is wrong."""
        if not isinstance(data, dict):
            raise TypeError('metadata is not a JSON object')
        required = ('profile', 'num_classes', 'class_names', 'class_colors', 'input_size')
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f'metadata lacks field(s) {", ".join(missing)}')
        profile, k = data['profile'], data['num_classes']
        if not isinstance(profile, str) or not profile:
            raise ValueError(f'metadata profile must be a non-empty string, got {profile!r}')
        if not isinstance(k, int) or isinstance(k, bool) or not 2 <= k <= 255:
            raise ValueError(f'metadata num_classes must be an integer in 2..255, got {k!r}')
        names, colors = data['class_names'], data['class_colors']
        if not isinstance(names, list) or len(names) != k or not all(isinstance(n, str) for n in names):
            raise ValueError(f'metadata class_names must be {k} strings')
        if (not isinstance(colors, list) or len(colors) != k
                or not all(_is_rgb(c) for c in colors)):
            raise ValueError(f'metadata class_colors must be {k} [r, g, b] triples of 0..255')
        size = data['input_size']
        if (not isinstance(size, list | tuple) or len(size) != 2
                or not all(isinstance(s, int) and s >= MIN_INPUT_SIDE for s in size)):
            raise ValueError(f'metadata input_size must be [H, W] integers >= {MIN_INPUT_SIDE}, got {size!r}')
        mean = _three_floats(data.get('mean', DEFAULT_MEAN), 'mean')
        std = _three_floats(data.get('std', DEFAULT_STD), 'std')
        if min(std) <= 0:
            raise ValueError(f'metadata std must be positive, got {std}')
        decoder_stride = data.get('decoder_stride', 4)
        if decoder_stride not in (2, 4) or isinstance(decoder_stride, bool):
            raise ValueError(f'metadata decoder_stride must be 2 or 4, got {decoder_stride!r}')
        extra = data.get('extra', {})
        if not isinstance(extra, dict):
            raise TypeError('metadata extra must be a JSON object')
        return cls(profile=profile, num_classes=k, class_names=list(names),
                   class_colors=[[int(v) for v in c] for c in colors],
                   input_size=(size[0], size[1]), mean=mean, std=std,
                   trained_on=str(data.get('trained_on', 'unknown')),
                   activation=str(data.get('activation', 'reu')), decoder_stride=decoder_stride,
                   package_version=str(data.get('package_version', 'unknown')), extra=extra)


def _is_rgb(c: Any) -> bool:
    return (isinstance(c, list | tuple) and len(c) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c))


def _three_floats(values: Any, name: str) -> tuple[float, float, float]:
    if (not isinstance(values, list | tuple) or len(values) != 3
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in values)):
        raise ValueError(f'metadata {name} must be 3 finite numbers, got {values!r}')
    return (float(values[0]), float(values[1]), float(values[2]))


# ----------------------------------------------------------------------------- saving

def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, meta: CheckpointMeta,
                    optimizer: torch.optim.Optimizer | None = None,
                    train_state: dict[str, Any] | None = None) -> None:
    """Write weights + metadata (and optionally what ``--resume`` needs) atomically.

    The file is written next to its destination and renamed into place, so a run
    killed while saving never leaves a half-written checkpoint behind.
    """
    path = Path(path)
    for attr in ('profile', 'num_classes'):
        if hasattr(model, attr) and getattr(model, attr) != getattr(meta, attr):
            raise ValueError(f'meta.{attr}={getattr(meta, attr)!r} but the model has '
                             f'{getattr(model, attr)!r}')
    CheckpointMeta.from_dict(json.loads(meta.to_json()))  # refuse to write what could not be read back
    tensors = {_MODEL_PREFIX + k: _stored(v) for k, v in model.state_dict().items()}
    metadata = {'format': FORMAT, 'jetseg': meta.to_json()}
    if optimizer is not None:
        opt_tensors, opt_json = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
        metadata['optimizer'] = opt_json
    if train_state is not None:
        try:
            metadata['train_state'] = json.dumps(train_state)
        except (TypeError, ValueError) as exc:
            raise ValueError(f'train_state must be JSON-serialisable: {exc}') from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    try:
        _st_save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _stored(tensor: torch.Tensor) -> torch.Tensor:
    """A copy safetensors can write: on the CPU, in the default (row-major) layout, whatever the
    layout it was trained in (channels_last on the CPU)."""
    return tensor.detach().cpu().clone(memory_format=torch.contiguous_format)


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """Split an optimiser state dict into safetensors tensors and a JSON string."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state_dict['state'].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f'{_OPT_STATE_PREFIX}{index}.{name}'] = _stored(value)
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = []
    for g, group in enumerate(state_dict['param_groups']):
        plain = {}
        for key, value in group.items():
            if isinstance(value, torch.Tensor):
                tensors[f'{_OPT_GROUP_PREFIX}{g}.{key}'] = value.detach().cpu().clone()
            else:
                plain[key] = value
        groups.append(plain)
    try:
        text = json.dumps({'param_groups': groups, 'scalars': scalars})
    except (TypeError, ValueError) as exc:
        raise ValueError(f'optimizer state has values that are neither tensors nor JSON: {exc}') from None
    return tensors, text


# ----------------------------------------------------------------------------- reading

def _kind_of(mode: int) -> str:
    for test, words in ((stat.S_ISDIR, 'a directory'), (stat.S_ISFIFO, 'a FIFO (named pipe)'),
                        (stat.S_ISCHR, 'a character device'), (stat.S_ISBLK, 'a block device'),
                        (stat.S_ISSOCK, 'a socket')):
        if test(mode):
            return words
    return 'not a regular file'


def _open_checkpoint(path: Path) -> BinaryIO:
    """Open a checkpoint for reading, refusing anything but a regular file with one clear reason.

    Opened non-blocking and checked on the open descriptor: a FIFO named as a checkpoint (or one
    swapped in after a check by name) must not block start-up waiting for a writer, and a device
    such as /dev/zero must not be read forever.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, 'O_CLOEXEC', 0))
    except FileNotFoundError:
        raise CheckpointError(path, 'no such file') from None
    except PermissionError:
        raise CheckpointError(path, 'permission denied (the file is not readable by this user)') from None
    except OSError as exc:
        raise CheckpointError(path, f'cannot open: {exc.strerror or exc}') from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _kind_of(mode)
            raise CheckpointError(path, f'is {kind}, not a regular file' if kind.startswith('a ')
                                  else 'not a regular file')
        os.set_blocking(fd, True)
        return os.fdopen(fd, 'rb')
    except BaseException:
        os.close(fd)
        raise


def _read_header(path: Path) -> tuple[dict[str, Any], dict[str, str], int]:
    """Parse and sanity-check the safetensors header; returns (tensor table, metadata, file size)."""
    with _open_checkpoint(path) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(path, f'truncated: {size} bytes is too short for a safetensors file')
            (n,) = struct.unpack('<Q', head)
            if n > min(_MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(path, f'truncated or not a safetensors file: header claims {n} bytes '
                                            f'but the file has {size}')
            raw = f.read(n)
        except OSError as exc:
            raise CheckpointError(path, f'cannot read: {exc.strerror or exc}') from None
    try:
        header = json.loads(raw.decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f'corrupt safetensors header (not JSON: {exc})') from None
    if not isinstance(header, dict):
        raise CheckpointError(path, 'corrupt safetensors header (not a JSON object)')
    metadata = header.pop('__metadata__', None) or {}
    end = 0
    for name, info in header.items():
        if not _is_tensor_entry(info):
            raise CheckpointError(path, f'corrupt safetensors header (bad entry for {name!r})')
        end = max(end, info['data_offsets'][1])
    if 8 + n + end > size:
        raise CheckpointError(path, f'truncated: tensor data needs {8 + n + end} bytes, the file has {size}')
    if not isinstance(metadata, dict) or 'jetseg' not in metadata:
        raise CheckpointError(path, "not a JetSeg checkpoint (no 'jetseg' entry in the header metadata)")
    return header, metadata, size


def _is_tensor_entry(info: object) -> bool:
    """A header entry as safetensors writes it: dtype, shape of sizes, [start, stop] byte offsets."""
    def whole(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(info, dict) or not isinstance(info.get('dtype'), str):
        return False
    shape, offsets = info.get('shape'), info.get('data_offsets')
    return (isinstance(shape, list) and all(whole(v) for v in shape)
            and isinstance(offsets, list) and len(offsets) == 2 and all(whole(v) for v in offsets)
            and offsets[0] <= offsets[1])


def _parse_meta(path: Path, metadata: dict[str, str]) -> CheckpointMeta:
    try:
        return CheckpointMeta.from_dict(json.loads(metadata['jetseg']))
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f'corrupt metadata (not JSON: {exc})') from None
    except (ValueError, TypeError) as exc:
        raise CheckpointError(path, f'corrupt metadata: {exc}') from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with _open_checkpoint(path) as f:
        try:
            data = f.read()
        except OSError as exc:
            raise CheckpointError(path, f'cannot read: {exc.strerror or exc}') from None
    try:
        return _st_load(data)
    except (SafetensorError, RuntimeError, ValueError) as exc:
        raise CheckpointError(path, f'corrupt tensor data ({exc})') from None


def read_checkpoint_meta(path: str | os.PathLike) -> CheckpointMeta:
    """Metadata only (cheap: reads the header, not the weights)."""
    path = Path(path)
    _, metadata, _ = _read_header(path)
    return _parse_meta(path, metadata)


def _check_expected(path: Path, meta: CheckpointMeta, profile: str | None, num_classes: int | None) -> None:
    if profile is not None and meta.profile != profile:
        raise CheckpointError(path, f"checkpoint is for profile '{meta.profile}', not '{profile}'")
    if num_classes is not None and meta.num_classes != num_classes:
        raise CheckpointError(path, f'checkpoint has {meta.num_classes} classes, not {num_classes}')


def load_checkpoint(path: str | os.PathLike, *, profile: str | None = None,
                    num_classes: int | None = None) -> tuple[torch.nn.Module, CheckpointMeta]:
    """Build the network a checkpoint describes and load its weights (CPU, eval mode).

    ``profile`` / ``num_classes``, when given, are what the caller expects; a
    checkpoint for anything else is refused instead of failing later on shapes.
    """
    from jetseg_core.model import build_model  # late: keeps metadata tools light

    path = Path(path)
    header, metadata, _ = _read_header(path)
    meta = _parse_meta(path, metadata)
    _check_expected(path, meta, profile, num_classes)
    try:
        model = build_model(meta.profile, meta.num_classes, activation=meta.activation,
                            decoder_stride=meta.decoder_stride)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(path, f'cannot build the network it describes: {exc}') from None
    expected = model.state_dict()
    stored = {k[len(_MODEL_PREFIX):]: k for k in header if k.startswith(_MODEL_PREFIX)}
    missing = [k for k in expected if k not in stored]
    if missing:
        more = f' (+{len(missing) - 3} more)' if len(missing) > 3 else ''
        raise CheckpointError(path, f'missing tensor(s) {", ".join(missing[:3])}{more} for profile '
                                    f"'{meta.profile}'")
    unexpected = [k for k in stored if k not in expected]
    if unexpected:
        raise CheckpointError(path, f'unexpected tensor(s) {", ".join(unexpected[:3])}: '
                                    f"not part of profile '{meta.profile}'")
    for name, ref in expected.items():
        shape = list(header[stored[name]].get('shape', []))
        if shape != list(ref.shape):
            raise CheckpointError(path, f'tensor {name} has shape {tuple(shape)}, profile '
                                        f"'{meta.profile}' with {meta.num_classes} classes needs "
                                        f'{tuple(ref.shape)}')
    tensors = _read_tensors(path)
    state = {name: tensors[key] for name, key in stored.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(path, f'weights do not fit the network: {exc}') from None
    model.eval()
    return model, meta


def restore_training_state(path: str | os.PathLike,
                           optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Load the optimiser state saved with the checkpoint; return its train_state dict.

    Raises CheckpointError if the file was saved without optimiser state or the
    state does not fit ``optimizer`` (different parameters or groups).
    """
    path = Path(path)
    _, metadata, _ = _read_header(path)
    try:
        train_state = json.loads(metadata.get('train_state', '{}'))
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f'corrupt train_state metadata (not JSON: {exc})') from None
    if optimizer is None:
        return train_state
    if 'optimizer' not in metadata:
        raise CheckpointError(path, 'no optimiser state stored (saved without an optimizer), cannot resume')
    try:
        opt_json = json.loads(metadata['optimizer'])
        groups, scalars = opt_json['param_groups'], opt_json['scalars']
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(path, f'corrupt optimizer metadata ({exc})') from None
    tensors = _read_tensors(path)
    state: dict[int, dict[str, Any]] = {}
    for index, values in scalars.items():
        state.setdefault(int(index), {}).update(values)
    current = optimizer.param_groups
    for key, value in tensors.items():
        if key.startswith(_OPT_STATE_PREFIX):
            index, name = key[len(_OPT_STATE_PREFIX):].split('.', 1)
            state.setdefault(int(index), {})[name] = value
        elif key.startswith(_OPT_GROUP_PREFIX):
            g, name = key[len(_OPT_GROUP_PREFIX):].split('.', 1)
            if int(g) < len(groups):
                groups[int(g)][name] = value
    for g, group in enumerate(groups):  # JSON turned tuples (Adam betas) into lists
        if g < len(current):
            for key, value in group.items():
                if isinstance(current[g].get(key), tuple) and isinstance(value, list):
                    group[key] = tuple(value)
    try:
        optimizer.load_state_dict({'state': state, 'param_groups': groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(path, f'optimiser state does not fit this optimizer: {exc}') from None
    return train_state


# ----------------------------------------------------------------------------- finding

#: Checkpoint settings that name weights shipped inside the package, and what each was trained on.
#: '' picks the weights for real cameras: CamVid where shipped for the profile, else synthetic.
SHIPPED_KINDS = ('camvid', 'synthetic')
#: Every checkpoint setting that is not a file path.
NAMED_CHECKPOINTS = ('', *SHIPPED_KINDS, 'untrained')


def shipped_checkpoint(profile: str, kind: str = '') -> Path | None:
    """The weights shipped inside the package for ``profile``, if any.

    ``kind`` 'camvid' (real street scenes), 'synthetic' (the synthetic scenes of the demo and the
    tests), or '' for real cameras: CamVid when shipped for the profile, else synthetic.
    """
    for k in (kind,) if kind else SHIPPED_KINDS:
        path = _WEIGHTS_DIR / f'{profile}_{k}.safetensors'
        if path.is_file():
            return path
    return None


def untrained_model(profile: str, num_classes: int | None = None,
                    input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
                    seed: int = 0) -> tuple[torch.nn.Module, CheckpointMeta]:
    """A randomly initialised network with CamVid-11 metadata: for speed tests, not for use.

    Seeded (without touching the global RNG) so two runs time and label identically.
    """
    from jetseg_core.model import build_model
    from jetseg_core.palettes import CAMVID11

    meta = CheckpointMeta.from_palette(profile, CAMVID11, input_size, trained_on='untrained (random init)')
    if num_classes is not None and num_classes != meta.num_classes:
        raise ValueError(f'the untrained model has CamVid-11 classes, not {num_classes}')
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(profile, meta.num_classes)
    return model.eval(), meta


def resolve_checkpoint(spec: str, profile: str | None = 'nano') -> tuple[torch.nn.Module, CheckpointMeta]:
    """Turn a user's checkpoint setting into a model: '' (shipped, for real cameras), 'camvid' or
    'synthetic' (shipped, by what they were trained on), 'untrained', or a file path.

    ``profile=None`` accepts a file for any profile (the named settings then use nano).
    """
    spec = (spec or '').strip()
    if spec in ('', *SHIPPED_KINDS):
        wanted = profile or 'nano'
        path = shipped_checkpoint(wanted, spec)
        if path is None:
            kind = f'{spec} ' if spec else ''
            raise CheckpointError(_WEIGHTS_DIR / f'{wanted}_{spec or SHIPPED_KINDS[0]}.safetensors',
                                  f"no {kind}weights shipped for profile '{wanted}'; train some with "
                                  f'`jetseg-train --profile {wanted}` and pass the file as the checkpoint, '
                                  "or use checkpoint 'untrained' for speed tests")
        return load_checkpoint(path, profile=wanted)
    if spec == 'untrained':
        return untrained_model(profile or 'nano')
    return load_checkpoint(os.path.expanduser(spec), profile=profile)
