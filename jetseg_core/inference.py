"""The one inference path: RGB frames in, label maps out.

The ROS node, the command-line tools and the benchmarks all use :class:`Segmenter`,
so a speed-up or a fix here reaches all of them and the benchmark measures what the
node runs. What makes it fast, by construction:

- the network is prepared once (:mod:`jetseg_core.fuse`): eval mode, gradients off,
  BatchNorm folded into the convolutions, channels_last, fp16 on CUDA; on CPU, convs rewritten
  into the kernels PyTorch runs fast there (dense 1x1, no shuffles, no width dilation);
- on CPU it runs as a frozen TorchScript graph, traced on the first frame: the same
  numbers without ~250 Python-level module and op calls per frame, and without holding
  the GIL, so the ROS executor thread can take the next image while the network runs;
- every frame runs under ``torch.inference_mode``;
- frames are resized as uint8 (torch's vectorised bilinear, antialiased when
  shrinking: the same filter as the training/eval transforms, ~1.3 ms for 720p);
- the normalised network input is allocated once per batch size (pinned upload
  buffers once per frame shape on CUDA) and reused; conversion to float and normalisation
  are one fused multiply-add written straight into it;
- the network stops before its final upsampling and the class decision is taken from the
  coarse logits (:func:`upsampled_labels`: the labels of the upsampled logits, exactly, at
  about half the cost of building them; compiled to TorchScript on CPU too); only the uint8
  label map is resized to the output size (nearest neighbour, as whole-word byte copies for
  whole factors such as 240x320 -> 480x640), never the C-channel logits.

A Segmenter owns mutable buffers and is not thread-safe: use one per thread.
"""
from __future__ import annotations

import copy
import functools
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from jetseg_core.backends import BACKENDS, INT8_ENGINES, Engine, create_engine, resolve_backend
from jetseg_core.checkpoint import CheckpointMeta, resolve_checkpoint
from jetseg_core.fuse import fold_batchnorm, rewrite_for_cpu
from jetseg_core.profiles import DEFAULT_PRECISION, apply_thread_setting

__all__ = ['BACKENDS', 'DEVICES', 'PRECISIONS', 'Segmentation', 'Segmenter', 'nearest_resize',
           'upsampled_labels']

DEVICES = ('auto', 'cpu', 'cuda')
PRECISIONS = ('auto', 'fp32', 'fp16', 'int8')
_MAX_CACHED_SHAPES = 16  # per-shape caches are dropped beyond this, so memory stays bounded


@dataclass
class Segmentation:
    """Result for one frame; timings are per frame (a batch's share for segment_batch)."""

    labels: np.ndarray  # HxW uint8 class ids
    probs: np.ndarray | None = None  # C x H x W float32 softmax, when asked for
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.inference_ms + self.postprocess_ms


def _resolve_device(device: str) -> torch.device:
    name = str(device).strip().lower()
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cpu':
        return torch.device('cpu')
    if name == 'cuda' or name.startswith('cuda:'):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{device}' requested but CUDA is not available to this torch "
                             f"({torch.__version__}); use device 'cpu' or 'auto'")
        return torch.device(name)
    raise ValueError(f"unknown device '{device}'; valid: {', '.join(DEVICES)}")


def _resolve_precision(precision: str, device: torch.device, backend: str = 'torch') -> str:
    name = str(precision).strip().lower()
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; valid: {', '.join(PRECISIONS)}")
    if name == 'auto':
        return 'fp16' if device.type == 'cuda' else 'fp32'
    if name == 'int8' and backend not in INT8_ENGINES:
        raise ValueError(f"precision 'int8' runs on backend {' or '.join(INT8_ENGINES)} (the graph "
                         f"jetseg-export --int8 calibrates), not on '{backend}'")
    if name == 'fp16' and device.type != 'cuda':
        raise ValueError("precision 'fp16' needs a CUDA device; on CPU use 'fp32'")
    return name


def upsampled_labels(coarse: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class ids (N x H x W uint8) of N x C x h x w logits bilinearly upsampled to ``size``.

    The same labels as ``F.interpolate(coarse, size, mode='bilinear', align_corners=False).argmax(1)``
    (up to float rounding where two classes tie), without building the N x C x H x W logits.
    An upsampled pixel is a convex combination of its four coarse neighbours, so where all four
    pick the same class that class wins at every pixel between them (each l_c >= l_k survives
    the weighted sum). Only the cells whose corners disagree, ~15-20 % of a street scene at
    1/4 size, are interpolated and decided pixel by pixel: 0.6-0.8 ms instead of 1.6 ms for the
    nano network's 11 x 60 x 80 logits on one CPU thread. That needs an even integer factor
    (the network's stride when the input divides by it); other sizes take the full upsampling.
    """
    n, c, h, w = coarse.shape
    # max().indices, not argmax(): on CPU argmax over the channel dim is ~4x slower.
    if tuple(size) == (h, w):
        return coarse.max(dim=1).indices.to(torch.uint8)
    s = size[0] // h
    if s % 2 or tuple(size) != (s * h, s * w):
        full = F.interpolate(coarse, size=size, mode='bilinear', align_corners=False)
        return full.max(dim=1).indices.to(torch.uint8)
    dev = coarse.device
    rows = torch.arange(-1, h + 1, device=dev).clamp_(0, h - 1)  # edge-replicated neighbours, as
    cols = torch.arange(-1, w + 1, device=dev).clamp_(0, w - 1)  # interpolate clamps at the border
    winners = coarse.max(dim=1).indices.to(torch.uint8)[:, rows][:, :, cols]  # N x (h+2) x (w+2)
    # Cell (i, j) spans padded neighbours i..i+1, j..j+1 and holds s x s output pixels; the output
    # starts s/2 pixels into the first cell.
    top_left = winners[:, :-1, :-1]
    mixed = ((top_left != winners[:, :-1, 1:]) | (top_left != winners[:, 1:, :-1])
             | (top_left != winners[:, 1:, 1:]))
    cells = top_left[..., None].expand(n, h + 1, w + 1, s * s).contiguous()
    mixed_index = torch.nonzero(mixed.view(-1)).squeeze(1)
    k = mixed_index.numel()
    if k:
        j = mixed_index % (w + 1)
        i = (mixed_index // (w + 1)) % (h + 1)
        image = mixed_index // ((w + 1) * (h + 1))
        y0, y1 = rows[i] + image * h, rows[i + 1] + image * h
        x0, x1 = cols[j], cols[j + 1]
        pixels = coarse.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view when channels_last
        corners = pixels.index_select(0, torch.cat([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1]))
        t = (torch.arange(s, device=dev, dtype=coarse.dtype) + 0.5) / s  # the s offsets inside a cell
        along = torch.stack([1 - t, t], dim=1)
        weights = (along[:, None, :, None] * along[None, :, None, :]).reshape(s * s, 4)
        # Classes stay the innermost dim throughout: the max runs over contiguous memory (twice as
        # fast as over a strided dim) and the corners need no transposed copy.
        values = (weights @ corners.view(4, k * c)).view(s * s, k, c)
        cells.view(-1, s * s).index_copy_(0, mixed_index, values.max(dim=2).indices.to(torch.uint8).t())
    canvas = cells.view(n, h + 1, w + 1, s, s).permute(0, 1, 3, 2, 4).reshape(n, (h + 1) * s, (w + 1) * s)
    o = s // 2
    return canvas[:, o:o + h * s, o:o + w * s].contiguous()


@functools.cache
def _scripted_upsampled_labels() -> Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]:
    """:func:`upsampled_labels` compiled to TorchScript, once per process; the Python one if that fails.

    Its ~40 small ops then run without the interpreter between them: 0.15 ms a frame less on
    CPU right after the network, when Python's own code and data have left the caches.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)
            return torch.jit.script(upsampled_labels)
    except (RuntimeError, AttributeError, TypeError) as exc:
        warnings.warn(f'TorchScript compilation of upsampled_labels failed, running it in Python: {exc}',
                      RuntimeWarning, stacklevel=2)
        return upsampled_labels


# kx -> (unsigned type of kx bytes, the number whose bytes are all 1): label * that number is
# the label byte repeated kx times, on either byte order.
_BYTE_COPIES = {1: (np.uint8, 1), 2: (np.uint16, 0x0101), 4: (np.uint32, 0x01010101),
                8: (np.uint64, 0x0101010101010101)}


def _replicate_labels(labels: np.ndarray, ky: int, kx: int) -> np.ndarray:
    """An HxW uint8 label map upscaled by whole factors: each label fills a ky x kx block.

    The pixel-centre nearest-neighbour resize to (ky*H, kx*W), written as one multiply into
    kx-byte words (``kx`` in 1, 2, 4, 8): ~0.015 ms for 240x320 -> 480x640, where numpy's
    take or repeat along both axes cost ~0.17 ms (they move one byte at a time).
    """
    dtype, ones = _BYTE_COPIES[kx]
    h, w = labels.shape
    out = np.empty((h, ky, w), dtype)
    np.multiply(labels[:, None, :], dtype(ones), out=out, dtype=dtype)
    return out.view(np.uint8).reshape(h * ky, w * kx)


@functools.lru_cache(maxsize=_MAX_CACHED_SHAPES)
def _nearest_indices(src: tuple[int, int], dst: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Source rows and columns of a pixel-centre nearest-neighbour resize from ``src`` to ``dst`` (H, W).

    Like PIL's NEAREST; unlike cv2's, ties never depend on rounding. Cached per shape pair.
    """
    rows = np.minimum(((np.arange(dst[0]) + 0.5) * src[0] / dst[0]).astype(np.intp), src[0] - 1)
    cols = np.minimum(((np.arange(dst[1]) + 0.5) * src[1] / dst[1]).astype(np.intp), src[1] - 1)
    rows.flags.writeable = cols.flags.writeable = False  # shared by every call with these shapes
    return rows, cols


def nearest_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (HxW or HxWxC) resized to ``size`` (H, W) by pixel-centre nearest neighbour.

    Label maps that grow by whole factors (kx in 1, 2, 4, 8) take a faster path with the same result.
    """
    h, w = image.shape[:2]
    if (h, w) == tuple(size):
        return image
    ky, ry = divmod(size[0], h)
    kx, rx = divmod(size[1], w)
    if image.ndim == 2 and image.dtype == np.uint8 and not ry and not rx and kx in _BYTE_COPIES:
        return _replicate_labels(image, ky, kx)
    # Two np.take passes with cached indices: ~0.6 ms for a 720p label map.
    rows, cols = _nearest_indices((h, w), (int(size[0]), int(size[1])))
    return image.take(rows, axis=0).take(cols, axis=1)


def _check_image(rgb: object) -> np.ndarray:
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f'expected an HxWx3 uint8 RGB numpy array, got {type(rgb).__name__}')
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'expected an HxWx3 uint8 RGB image, got dtype {rgb.dtype} shape {rgb.shape}')
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f'image is empty: shape {rgb.shape}')
    return rgb if rgb.flags.c_contiguous else np.ascontiguousarray(rgb)


def _check_size(size: Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or not all(isinstance(s, int | np.integer) and s >= 1 for s in size):
        raise ValueError(f'output_size must be (H, W) positive integers, got {size!r}')
    return int(size[0]), int(size[1])


class _CoarseLogits(torch.nn.Module):
    """The network's :meth:`~jetseg_core.model.JetSeg.coarse_logits` as a module's forward, for tracing."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.coarse_logits(x)


class Segmenter:
    """Runs a JetSeg network on uint8 RGB frames of any size.

    ``device``: 'auto' (CUDA if available), 'cpu' or 'cuda'. ``precision``: 'fp32',
    'fp16' (CUDA only), 'int8' (backend onnxruntime or openvino: the graph ``jetseg-export --int8``
    calibrated into the engine cache) or 'auto' (the default: fp16 on CUDA). ``num_threads`` sets torch's CPU
    thread count (process-wide); None (the default) sets the profile's best
    (:func:`jetseg_core.profiles.apply_thread_setting`: 1 for nano on CPU, else one per core),
    shown in ``threads``. ``fold_bn`` folds BatchNorm into convolutions.
    The other switches exist for benchmarks and tests; their defaults (None) are what
    ``jetseg-benchmark`` measured fastest. ``cpu_rewrites``: :func:`jetseg_core.fuse.rewrite_for_cpu`
    (dense 1x1 convs, no shuffles, no width dilation; default on CPU). ``channels_last``: NHWC
    memory (default on; on CPU it pays off once the 1x1 convs are dense). ``torchscript``: run a frozen
    TorchScript graph (default on CPU). CUDA keeps grouped convs and eager PyTorch until they
    are measured there.

    ``backend`` picks what runs the network (:mod:`jetseg_core.backends`): 'torch' (the above),
    'openvino' or 'onnxruntime' (CPU), 'tensorrt' (CUDA), or 'auto' (the default: TensorRT on
    CUDA when installed, else torch; on CPU OpenVINO, else ONNX Runtime, else torch). Everything
    else (preprocessing, class decision, outputs) is the same code for every backend. An engine is
    built on first use and cached (``~/.cache/jetseg``); ``log`` gets a line when one is built.
    A backend that cannot run here raises :class:`~jetseg_core.backends.BackendUnavailable`
    (a ValueError). ``backend`` (the property) names what runs, e.g. 'openvino-fp32-cpurewrites'.
    OpenVINO in fp32 gets the rewritten network (dense 1x1s, no shuffles, undilated; not exp2, which
    ONNX lacks), the other engines the plain folded one; ``cpu_rewrites`` overrides that, for
    benchmarks to compare.
    """

    def __init__(self, model: torch.nn.Module, meta: CheckpointMeta, device: str = 'auto',
                 precision: str = DEFAULT_PRECISION, num_threads: int | None = None, fold_bn: bool = True,
                 channels_last: bool | None = None, torchscript: bool | None = None,
                 cpu_rewrites: bool | None = None, backend: str = 'auto',
                 log: Callable[[str], None] | None = None) -> None:
        self.backend_name, device = resolve_backend(backend, device)
        engine = self.backend_name != 'torch'
        self._device = _resolve_device(device)
        self.precision = _resolve_precision(precision, self._device, self.backend_name)
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise ValueError(f'num_threads must be a positive integer, got {num_threads!r}')
        self.threads = apply_thread_setting(meta.profile, self._device.type, num_threads)
        on_cpu = self._device.type == 'cpu' and not engine  # the switches below are torch's
        # Engines read a plain N x 3 x H x W float32 input.
        self.channels_last = not engine if channels_last is None else bool(channels_last)
        self.torchscript = on_cpu if torchscript is None else bool(torchscript) and not engine
        # OpenVINO runs the rewritten graph 1.05-1.4x faster than the plain one (AVX-512 to AVX2 CPUs),
        # ONNX Runtime no faster (docs/performance.md#backends); int8 is calibrated on the plain one.
        rewrites_pay = on_cpu or (self.backend_name == 'openvino' and self.precision != 'int8')
        self.cpu_rewrites = rewrites_pay if cpu_rewrites is None else bool(cpu_rewrites)
        self.meta = copy.deepcopy(meta)  # input buffers follow its input_size: keep a private copy
        self.fold_bn = bool(fold_bn)
        self._dtype = torch.float16 if self.precision == 'fp16' and not engine else torch.float32
        self._memory_format = torch.channels_last if self.channels_last else torch.contiguous_format

        # Every rewrite works on a copy: the caller's model is left alone.
        net = fold_batchnorm(model) if fold_bn else copy.deepcopy(model)
        if self.cpu_rewrites:
            rewrite_for_cpu(net, exp2=not engine)
        net.eval().requires_grad_(False)
        self._engine: Engine | None = None
        if engine:  # built from the folded network, on the CPU
            net = net.float().cpu()
            self._engine = create_engine(self.backend_name, net, self.input_size, device=str(self._device),
                                         precision=self.precision, num_threads=self.threads.count, log=log)
        else:
            net = net.to(device=self._device, dtype=self._dtype, memory_format=self._memory_format)
        self._model = net
        self._graph: torch.jit.ScriptModule | None = None  # traced from the first frame when torchscript
        scripted = self.torchscript or (engine and self._device.type == 'cpu')
        self._labels_of = _scripted_upsampled_labels() if scripted else upsampled_labels

        mean = torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift
        self._scale = (1.0 / (255.0 * std)).to(self._device, self._dtype)
        self._shift = (-mean / std).to(self._device, self._dtype)
        # The same per channel, repeated along a channels-last row of W pixels x 3 channels.
        width = self.input_size[1]
        self._scale_row = self._scale.view(3).repeat(width)
        self._shift_row = self._shift.view(3).repeat(width)
        self._inputs: dict[int, torch.Tensor] = {}  # batch size -> N x 3 x h x w network input
        self._uploads: dict[tuple[int, ...], torch.Tensor] = {}  # CUDA: (slot, frame shape) -> pinned

    @classmethod
    def from_checkpoint(cls, spec: str, profile: str | None = 'nano', **kwargs: object) -> Segmenter:
        """Build from a checkpoint spec: '' (shipped weights), 'untrained' or a file path."""
        model, meta = resolve_checkpoint(spec, profile)
        return cls(model, meta, **kwargs)

    # ----------------------------------------------------------------- description
    @property
    def model(self) -> torch.nn.Module:
        """The prepared network (folded, on device): for export and benchmarks, not for training."""
        return self._model

    @property
    def device(self) -> str:
        return self._device.type

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.meta.input_size)

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.class_names)

    @property
    def profile(self) -> str:
        return self.meta.profile

    @property
    def palette(self) -> np.ndarray:
        return np.asarray(self.meta.class_colors, dtype=np.uint8).reshape(-1, 3)

    @property
    def engine(self) -> Engine | None:
        """The engine that runs the network (:mod:`jetseg_core.backends`); None with backend 'torch'."""
        return self._engine

    @property
    def backend(self) -> str:
        """What runs the network: the engine ('openvino-fp32-cpurewrites', 'tensorrt-fp16') or torch's."""
        if self._engine is not None:
            return self._engine.label + ('-cpurewrites' if self.cpu_rewrites else '')
        parts = ['torchscript' if self.torchscript else 'torch', self.precision]
        parts += ['bnfolded'] if self.fold_bn else []
        parts += ['cpurewrites'] if self.cpu_rewrites else []
        return '-'.join(parts + (['cl'] if self.channels_last else []))

    def __repr__(self) -> str:
        h, w = self.input_size
        return (f'Segmenter({self.profile}, {self.num_classes} classes, {h}x{w}, {self.device}, '
                f'{self.backend})')

    # ----------------------------------------------------------------- running
    def segment(self, rgb: np.ndarray, *, output_size: tuple[int, int] | None = None,
                return_probs: bool = False) -> Segmentation:
        """Label one HxWx3 uint8 RGB frame; labels come back at its size (or ``output_size``).

        Labels are the argmax of the logits bilinearly upsampled to the network's input size,
        resized to the output size by nearest neighbour: what the node publishes, fast. With
        ``return_probs`` the logits are upsampled straight to the output size instead (slower; a
        few % of pixels at most, along class boundaries, then differ), and labels == probs.argmax(0).
        """
        return self.segment_batch([rgb], output_size=output_size, return_probs=return_probs)[0]

    def segment_batch(self, images: Sequence[np.ndarray], *, output_size: tuple[int, int] | None = None,
                      return_probs: bool = False) -> list[Segmentation]:
        """Label several frames (any sizes) in one forward pass."""
        if len(images) == 0:
            return []
        frames = [_check_image(im) for im in images]
        out_size = _check_size(output_size)
        cuda = self._device.type == 'cuda'
        with torch.inference_mode():
            t0 = time.perf_counter()
            x = self._preprocess(frames)
            t1 = time.perf_counter()
            logits = self._forward(x)
            if cuda:
                torch.cuda.synchronize(self._device)
            t2 = time.perf_counter()
            results = self._postprocess(logits, frames, out_size, return_probs)
            t3 = time.perf_counter()
        n = len(frames)
        for r in results:
            r.preprocess_ms = (t1 - t0) * 1000.0 / n
            r.inference_ms = (t2 - t1) * 1000.0 / n
            r.postprocess_ms = (t3 - t2) * 1000.0 / n
        return results

    def warmup(self, iterations: int = 2) -> None:
        """Run a few frames so the first real frame does not pay for allocation and tuning.

        Noise, not a blank frame: its class boundaries take the class decision's refinement path,
        which TorchScript optimises on its second run (the first real frame took 6.6 ms more).
        """
        h, w = self.input_size
        noise = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        for _ in range(iterations):
            self.segment(noise)

    def set_num_threads(self, num_threads: int | None) -> None:
        """Change the inference threads at run time (None: the profile's best), torch's and the engine's.

        An engine applies them by reloading itself from its cache (~0.3 s for nano with OpenVINO).
        """
        self.threads = apply_thread_setting(self.meta.profile, self._device.type, num_threads or None)
        if self._engine is not None and self._engine.threads != self.threads.count:
            self._engine.set_num_threads(self.threads.count)

    # ----------------------------------------------------------------- internals
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's coarse logits (before its final upsampling) for the input batch."""
        if self._engine is not None:
            return self._engine(x)
        if not self.torchscript:
            return self._model.coarse_logits(x)
        if self._graph is None:
            # The trace records shapes as size() ops, so one graph serves every batch size and
            # input size; freezing inlines the weights as constants. TorchScript is deprecated in
            # favour of torch.compile, which here needed ~50 s and a C++ compiler at start-up and
            # ran no faster; should a later torch drop tracing, run eager rather than fail.
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore', DeprecationWarning)
                    warnings.simplefilter('ignore', torch.jit.TracerWarning)
                    self._graph = torch.jit.freeze(torch.jit.trace(_CoarseLogits(self._model).eval(), x,
                                                                   check_trace=False))
            except (RuntimeError, AttributeError, TypeError) as exc:
                warnings.warn(f'TorchScript tracing failed, running eager PyTorch: {exc}', RuntimeWarning,
                              stacklevel=2)
                self.torchscript = False
                return self._model.coarse_logits(x)
        return self._graph(x)

    def _input_buffer(self, n: int) -> torch.Tensor:
        if n not in self._inputs:
            self._inputs[n] = torch.empty((n, 3, *self.input_size), dtype=self._dtype, device=self._device,
                                          memory_format=self._memory_format)
        return self._inputs[n]

    def _to_device(self, frame: np.ndarray, slot: int) -> torch.Tensor:
        """1 x 3 x H x W uint8 view of a frame (channels_last memory), on the model's device."""
        if frame.flags.writeable:
            src = torch.from_numpy(frame)
        else:  # only ever read here, so no copy; torch would warn that it cannot protect it
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', UserWarning)
                src = torch.from_numpy(frame)
        if self._device.type != 'cpu':
            key = (slot, *frame.shape)  # one buffer per batch slot: uploads of a batch overlap
            pinned = self._uploads.get(key)
            if pinned is None:
                if len(self._uploads) >= _MAX_CACHED_SHAPES:  # a stream whose size keeps changing
                    self._uploads.clear()
                pinned = self._uploads[key] = torch.empty(frame.shape, dtype=torch.uint8, pin_memory=True)
            pinned.copy_(src)
            src = pinned.to(self._device, non_blocking=True)
        # Batch dim first, then permuted: its stride is then a whole frame, so torch sees channels_last
        # memory and resizes into channels_last (permute-then-unsqueeze gives stride 3 and NCHW output).
        return src[None].permute(0, 3, 1, 2)

    def _preprocess(self, frames: list[np.ndarray]) -> torch.Tensor:
        x = self._input_buffer(len(frames))
        size = self.input_size
        for i, frame in enumerate(frames):
            src = self._to_device(frame, i)
            if frame.shape[:2] != size:
                shrink = frame.shape[0] > size[0] or frame.shape[1] > size[1]
                if src.device.type != 'cpu':
                    src = src.float()  # the vectorised uint8 kernel is CPU-only
                src = F.interpolate(src, size=size, mode='bilinear', align_corners=False, antialias=shrink)
                if src.dtype != torch.uint8:
                    src = src.round_().clamp_(0, 255)  # same values as the CPU uint8 kernel
            if self.channels_last:
                # x = src * scale + shift over rows of W x 3 interleaved values: one contiguous loop,
                # where broadcasting 1x3x1x1 over channels-last memory ran at half the speed.
                h, w = size
                rows = x[i:i + 1].permute(0, 2, 3, 1).view(1, h, w * 3)
                torch.addcmul(self._shift_row, src.permute(0, 2, 3, 1).reshape(1, h, w * 3), self._scale_row,
                              out=rows)
            else:
                torch.addcmul(self._shift, src, self._scale, out=x[i:i + 1])
        return x

    def _postprocess(self, coarse: torch.Tensor, frames: list[np.ndarray], out_size: tuple[int, int] | None,
                     return_probs: bool) -> list[Segmentation]:
        if return_probs:
            # Logits upsampled straight to each output size: probs and labels agree to the pixel.
            results = []
            for i, frame in enumerate(frames):
                logits = F.interpolate(coarse[i:i + 1].float(), size=out_size or frame.shape[:2],
                                       mode='bilinear', align_corners=False)
                probs = torch.softmax(logits, dim=1)[0]
                results.append(Segmentation(labels=probs.argmax(0).to(torch.uint8).cpu().numpy(),
                                            probs=probs.cpu().numpy()))
            return results
        # Fast path: the exact decision at network size, then nearest neighbour to each output size.
        labels = self._labels_of(coarse, self.input_size).cpu().numpy()  # N x h x w, network size
        return [Segmentation(labels=nearest_resize(labels[i], out_size or frame.shape[:2]))
                for i, frame in enumerate(frames)]
