"""Inference engines behind :class:`~jetseg_core.inference.Segmenter`: OpenVINO, ONNX Runtime, TensorRT.

Why: dedicated engines run the same network faster than PyTorch (nano at 360x480 to its coarse
logits, one CPU thread: TorchScript path 24.9 ms, ONNX Runtime 18.5 ms, OpenVINO 13.4 ms), and
robot users already install them. The Segmenter keeps preprocessing, the class decision, its
buffers and outputs; an engine only replaces the network: a normalised N x 3 x H x W float32
tensor in, the coarse logits out as a torch tensor (N x C x h x w).

Every engine is built from the network the Segmenter hands it, BN-folded, up to its coarse
logits (``coarse_logits``), exported to ONNX (:func:`jetseg_core.export.onnx_bytes`) with the
logits transposed to N x h x w x C, so the tensor handed back is channels-last memory: the layout
:func:`~jetseg_core.inference.upsampled_labels` reads fastest. OpenVINO fp32 gets it with the CPU
rewrites of :mod:`jetseg_core.fuse` (dense 1x1s, no shuffles, undilated; 1.05-1.4x faster there,
by CPU), the others without (ONNX Runtime gains nothing from them); exp2 never (no ONNX operator).

Built engines are cached under ``$XDG_CACHE_HOME/jetseg`` (default ``~/.cache/jetseg``), never in
the package: the exported ONNX (what ONNX Runtime runs), OpenVINO's compiled model, TensorRT's
engine. A file's name holds a hash of the weights and architecture, the input size, the
precision, the engine's version (and, for TensorRT, the GPU) and :data:`GRAPH_VERSION`, so a change
of any of them builds a new one. Files are written to a temporary name and renamed: two processes
starting at once both build, and neither ever reads half a file.

Precision 'int8' (ONNX Runtime and OpenVINO) runs a quantised graph that needs calibration frames,
so it is built ahead of time by ``jetseg-export --int8 --calib-dataset NAME --data-root DIR``
(:func:`jetseg_core.export.quantize_int8`) into this cache, named after the network, the input size
and the calibration set (:func:`int8_graph_path`); an engine with precision 'int8' loads the newest
such graph of its network and size (:func:`find_int8_graph`), and says how to build one if there is
none. OpenVINO's compiled int8 model is cached under a key holding that graph's name.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ['BACKENDS', 'ENGINES', 'INT8_ENGINES', 'BackendUnavailable', 'Engine', 'OnnxRuntimeEngine',
           'OpenVINOEngine', 'TensorRTEngine', 'backend_available', 'cache_dir', 'create_engine',
           'find_int8_graph', 'int8_graph_path', 'resolve_backend', 'weights_digest']

BACKENDS = ('auto', 'torch', 'openvino', 'onnxruntime', 'tensorrt')
ENGINES = ('openvino', 'onnxruntime', 'tensorrt')
CPU_ENGINES = ('openvino', 'onnxruntime')  # the order 'auto' tries them in on CPU
#: The engines that run the int8 graph of ``jetseg-export --int8`` (precision 'int8').
INT8_ENGINES = CPU_ENGINES
#: Bumped whenever the exported engine graph changes: cache files of older graphs are never read.
GRAPH_VERSION = 1
_INSTALL_HINTS = {
    'openvino': 'pip install openvino',
    'onnxruntime': 'pip install onnxruntime',
    'tensorrt': 'on a Jetson it comes with JetPack (python3-libnvinfer); elsewhere pip install tensorrt',
}
_logger = logging.getLogger('jetseg_core.backends')


class BackendUnavailable(ValueError):
    """The backend asked for cannot run here (not installed, no device for it); the message is one line."""


# ----------------------------------------------------------------------------- choosing

def _import(name: str) -> Any:
    """The engine's Python module, or BackendUnavailable saying how to install it."""
    if name == 'openvino':
        # `import openvino` loads its model converter, whose telemetry (on unless opted out) writes
        # ~/intel/openvino_ga_cid and sends usage events; the runtime needs none of it. A None entry
        # makes that import fail, and OpenVINO falls back to its own no-op stub.
        sys.modules.setdefault('openvino_telemetry', None)
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install's OSError/RuntimeError
        raise BackendUnavailable(f"backend '{name}' is not installed here ({_first_line(exc)}); "
                                 f"{_INSTALL_HINTS[name]}, or use backend 'auto' or 'torch'") from None


def backend_available(name: str) -> bool:
    """Whether the engine's module imports here (tensorrt also needs a CUDA GPU)."""
    import torch

    if name == 'torch':
        return True
    if name == 'tensorrt' and not torch.cuda.is_available():
        return False
    try:
        _import(name)
    except BackendUnavailable:
        return False
    return True


def resolve_backend(backend: str, device: str = 'auto') -> tuple[str, str]:
    """The backend that runs and the device it needs, for what the user asked.

    'auto' on CUDA: TensorRT when installed, else torch; on CPU: OpenVINO, else ONNX Runtime, else
    torch. A named engine that cannot run here raises :class:`BackendUnavailable`; an unknown name
    raises ValueError. ``device`` 'auto' becomes what the backend runs on ('cpu' for the CPU engines).
    """
    import torch

    name = str(backend).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'; valid: {', '.join(BACKENDS)}")
    dev = str(device).strip().lower()
    cuda = torch.cuda.is_available()
    if name == 'auto':
        if dev == 'auto':
            dev = 'cuda' if cuda else 'cpu'
        if dev.startswith('cuda'):
            return ('tensorrt' if backend_available('tensorrt') else 'torch'), dev
        if dev == 'cpu':
            for engine in CPU_ENGINES:
                if backend_available(engine):
                    return engine, dev
        return 'torch', dev
    if name in CPU_ENGINES:
        dev = 'cpu' if dev == 'auto' else dev
        if dev != 'cpu':
            raise BackendUnavailable(f"backend '{name}' runs on the CPU; use device 'cpu' or 'auto' "
                                     f"(got '{device}'), or backend 'tensorrt'/'torch' for CUDA")
        _import(name)
    elif name == 'tensorrt':
        if not cuda:
            raise BackendUnavailable("backend 'tensorrt' needs a CUDA GPU and torch sees none here "
                                     f'(torch {torch.__version__}); use backend \'auto\'')
        dev = 'cuda' if dev == 'auto' else dev
        if not dev.startswith('cuda'):
            raise BackendUnavailable(f"backend 'tensorrt' runs on CUDA; use device 'cuda' or 'auto' "
                                     f"(got '{device}')")
        _import('tensorrt')
    return name, dev


# ----------------------------------------------------------------------------- cache

def cache_dir() -> Path:
    """Where built engines go: ``$XDG_CACHE_HOME/jetseg``, else ``~/.cache/jetseg`` (a relative
    XDG_CACHE_HOME is ignored, as the XDG specification says)."""
    base = os.environ.get('XDG_CACHE_HOME', '')
    root = Path(base) if base and os.path.isabs(base) else Path.home() / '.cache'
    return root / 'jetseg'


def weights_digest(net: torch.nn.Module) -> str:
    """SHA-256 of a network's architecture (its module tree, which names kernel sizes, dilations and
    groups) and every tensor of its state dict: the identity of what an engine computes."""
    import torch

    digest = hashlib.sha256(repr(net).encode())
    for name, tensor in net.state_dict().items():
        tensor = tensor.detach().to('cpu').contiguous()
        digest.update(f'{name}:{tensor.dtype}:{tuple(tensor.shape)};'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _cache_path(kind: str, suffix: str, net: torch.nn.Module, input_size: Sequence[int], digest: str,
                *fields: str) -> Path:
    """A cache file whose name changes with every input to the build."""
    import torch

    h, w = input_size
    key = hashlib.sha256('|'.join([digest, f'{h}x{w}', f'graph{GRAPH_VERSION}', torch.__version__,
                                   platform.machine(), *fields]).encode()).hexdigest()[:20]
    profile = str(getattr(net, 'profile', 'net'))
    return cache_dir() / f'{profile}-{h}x{w}-{kind}-{key}{suffix}'


def _int8_stem(net: torch.nn.Module, input_size: Sequence[int], digest: str) -> str:
    """The part of an int8 graph's file name that names the network, size and graph version."""
    path = _cache_path('graph-int8', '', net, input_size, digest, 'int8')
    return path.name


def int8_graph_path(net: torch.nn.Module, input_size: Sequence[int], digest: str, calibration: str) -> Path:
    """Where ``jetseg-export --int8`` caches the int8 graph of a BN-folded network at ``input_size``,
    calibrated on the set that ``calibration`` identifies (dataset, root, split, frames).

    The name is ``<network key>-<calibration key>.onnx``: the Segmenter finds the graphs of its network
    without knowing the calibration set, and a new calibration set never overwrites another's graph.
    """
    calib = hashlib.sha256(calibration.encode()).hexdigest()[:12]
    return cache_dir() / f'{_int8_stem(net, input_size, digest)}-{calib}.onnx'


def find_int8_graph(net: torch.nn.Module, input_size: Sequence[int], digest: str | None = None
                    ) -> Path | None:
    """The newest cached int8 graph of this network at ``input_size`` (any calibration set), or None."""
    digest = digest or weights_digest(net)
    stem = _int8_stem(net, input_size, digest)
    try:
        found = [p for p in cache_dir().glob(f'{stem}-*.onnx') if p.is_file()]
    except OSError:
        return None
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name), default=None)


def _read_cache(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _write_cache(path: Path, data: bytes, log: Callable[[str], None]) -> bool:
    """Write via a temporary file in the same folder and an atomic rename; False (logged) if the
    cache cannot be written: the engine then works, and is built again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.partial', dir=path.parent)
        try:
            with os.fdopen(fd, 'wb') as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log(f'cannot write the engine cache {path} ({exc.strerror or exc}); it is built again next start')
        return False
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class EngineGraph:
    """The ONNX graph every engine is built from (coarse logits, N x h x w x C), exported on first
    use or read from the cache; ``from_cache`` says which."""

    def __init__(self, net: torch.nn.Module, input_size: Sequence[int], digest: str,
                 log: Callable[[str], None]) -> None:
        self._net, self._size, self._log = net, tuple(input_size), log
        self.path = _cache_path('graph', '.onnx', net, input_size, digest)
        self.from_cache = False
        self._data: bytes | None = None

    def __call__(self) -> bytes:
        if self._data is None:
            self._data = _read_cache(self.path)
            self.from_cache = bool(self._data)
            if not self._data:
                self.export()
        return self._data

    def export(self) -> bytes:
        """Export the network again (and overwrite the cached file)."""
        from jetseg_core.export import onnx_bytes

        started = time.perf_counter()
        self._data = onnx_bytes(self._net, self._size, returns='coarse', dynamic_batch=True,
                                channels_last_output=True)
        self.from_cache = False
        stored = _write_cache(self.path, self._data, self._log)
        self._log(f'exported the network to ONNX in {time.perf_counter() - started:.1f} s'
                  + (f', cached at {self.path}' if stored else ''))
        return self._data


# ----------------------------------------------------------------------------- engines

class Engine:
    """Runs the exported network: normalised N x 3 x H x W float32 in, coarse logits out
    (a torch tensor, N x C x h x w, channels-last memory where the engine allows)."""

    name = ''

    def __init__(self, precision: str = 'fp32') -> None:
        self.precision = precision
        self.threads: int | None = None

    @property
    def label(self) -> str:
        """What runs, for logs and reports: e.g. 'openvino-fp32'."""
        return f'{self.name}-{self.precision}'

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def set_num_threads(self, threads: int | None) -> None:
        """Run with ``threads`` CPU threads (None: the engine's default, one per core)."""
        self.threads = threads

    @property
    def runtime_threads(self) -> int | None:
        """The thread count the engine library itself reports (0: its default); None if it has none."""
        return None

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.label}, threads {self.threads or "default"})'


def _host_array(x: torch.Tensor) -> np.ndarray:
    """The tensor as a C-contiguous float32 numpy array: no copy for the Segmenter's NCHW buffer."""
    import torch

    return x.detach().to('cpu', torch.float32).contiguous().numpy()


class OnnxRuntimeEngine(Engine):
    """ONNX Runtime, CPU execution provider, on the cached ONNX graph.

    ``num_threads`` becomes the intra-op thread count (inter-op 1, sequential execution). With
    ``OMP_WAIT_POLICY=PASSIVE`` (the node sets it) its threads do not spin between ops either:
    on a shared robot CPU spinning threads collapse when another process keeps a core busy.
    """

    name = 'onnxruntime'

    def __init__(self, onnx: bytes, num_threads: int | None = None, precision: str = 'fp32') -> None:
        super().__init__(precision)
        self._ort = _import('onnxruntime')
        self._onnx = onnx
        self.set_num_threads(num_threads)

    def set_num_threads(self, threads: int | None) -> None:
        ort = self._ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or 0)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if os.environ.get('OMP_WAIT_POLICY', '').strip().upper() == 'PASSIVE':
            options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        self._session = ort.InferenceSession(self._onnx, options, providers=['CPUExecutionProvider'])
        self._input = self._session.get_inputs()[0].name
        self.threads = threads

    @property
    def runtime_threads(self) -> int | None:
        return int(self._session.get_session_options().intra_op_num_threads)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        (out,) = self._session.run(None, {self._input: _host_array(x)})
        return torch.from_numpy(out).permute(0, 3, 1, 2)


class OpenVINOEngine(Engine):
    """OpenVINO's CPU plugin: fp32 (no bf16 even where the CPU has it), latency hint, one stream,
    compiled for a batch of one (larger batches run image by image). With precision 'int8' it
    compiles the quantised graph of ``jetseg-export --int8`` (its QuantizeLinear/DequantizeLinear
    pairs become int8 kernels); ``graph_key`` (that file's name) is then part of the cache key.

    The compiled model is exported to the cache and imported on later starts; the thread count is
    applied at import, so changing it costs an import (~0.3 s for nano), not a compile.
    """

    name = 'openvino'

    def __init__(self, onnx: Callable[[], bytes], net: torch.nn.Module, input_size: Sequence[int],
                 digest: str, num_threads: int | None = None,
                 log: Callable[[str], None] = _logger.info, precision: str = 'fp32',
                 graph_key: str = '') -> None:
        super().__init__(precision)
        ov = _import('openvino')
        self._core = ov.Core()
        version = ov.get_version()
        fields = ('f32',) if precision == 'fp32' else (precision, graph_key)
        self.cache_path = _cache_path('openvino', '.blob', net, input_size, digest, f'openvino {version}',
                                      *fields)
        self._blob = _read_cache(self.cache_path)
        compiled = None
        if self._blob:
            try:
                compiled = self._import(num_threads)
            except RuntimeError as exc:
                log(f'the cached OpenVINO model {self.cache_path} is unusable ({_first_line(exc)}); '
                    'building it again')
                compiled = None
        if compiled is None:
            graph = onnx()
            started = time.perf_counter()
            h, w = (int(s) for s in input_size)
            model = self._core.read_model(graph)
            model.reshape([1, 3, h, w])
            compiled = self._core.compile_model(model, 'CPU', self._config(num_threads))
            exported = compiled.export_model()
            self._blob = exported.getvalue() if hasattr(exported, 'getvalue') else bytes(exported)
            stored = _write_cache(self.cache_path, self._blob, log)
            log(f'built the OpenVINO {version.split("-")[0]} {precision} engine in '
                f'{time.perf_counter() - started:.1f} s'
                + (f', cached at {self.cache_path}' if stored else ''))
        self._use(compiled, num_threads)

    @staticmethod
    def _config(threads: int | None) -> dict[str, Any]:
        # The precision hint on import too: without it a CPU with bf16 (AVX512_BF16, AMX) runs the
        # imported model in bf16, 1% off fp32's logits.
        config: dict[str, Any] = {'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': 1,
                                  'INFERENCE_PRECISION_HINT': 'f32'}
        if threads:
            config['INFERENCE_NUM_THREADS'] = int(threads)
        return config

    def _import(self, threads: int | None) -> Any:
        return self._core.import_model(self._blob, 'CPU', self._config(threads))

    def _use(self, compiled: Any, threads: int | None) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self.threads = threads

    def set_num_threads(self, threads: int | None) -> None:
        if threads != self.threads:
            self._use(self._import(threads), threads)

    @property
    def runtime_threads(self) -> int | None:
        return int(self._compiled.get_property('INFERENCE_NUM_THREADS'))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        array = _host_array(x)
        outs = [self._request.infer({0: array[i:i + 1]}, share_inputs=True)[0] for i in range(len(array))]
        out = outs[0] if len(outs) == 1 else np.concatenate(outs)
        return torch.from_numpy(out).permute(0, 3, 1, 2)


class TensorRTEngine(Engine):
    """TensorRT on CUDA: an engine built from the cached ONNX graph with the TensorRT Python API
    (fp16 kernels allowed with precision 'fp16'), for a batch of one; input and output stay on
    the GPU (torch tensors), run on torch's current stream.

    Engines are specific to the GPU and the TensorRT version: both are in the cache key.
    """

    name = 'tensorrt'

    def __init__(self, onnx: Callable[[], bytes], net: torch.nn.Module, input_size: Sequence[int],
                 digest: str, device: torch.device, precision: str = 'fp16',
                 log: Callable[[str], None] = _logger.info) -> None:
        import torch

        super().__init__(precision)
        trt = _import('tensorrt')
        if not hasattr(trt.ICudaEngine, 'num_io_tensors'):  # the named-tensor API came with 8.5
            raise BackendUnavailable(f'TensorRT {trt.__version__} is too old for backend \'tensorrt\' '
                                     '(needs 8.5 or later: JetPack 5 or 6); use backend \'torch\'')
        self._trt = trt
        self._device = torch.device(device)
        gpu = torch.cuda.get_device_name(self._device)
        capability = '.'.join(str(v) for v in torch.cuda.get_device_capability(self._device))
        self.cache_path = _cache_path('tensorrt', '.engine', net, input_size, digest,
                                      f'tensorrt {trt.__version__}', gpu, capability, precision)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        plan = _read_cache(self.cache_path)
        engine = runtime.deserialize_cuda_engine(plan) if plan else None
        if engine is None:
            if plan:
                log(f'the cached TensorRT engine {self.cache_path} is unusable; building it again')
            graph = onnx()
            started = time.perf_counter()
            plan = self._build(graph, tuple(int(s) for s in input_size))
            stored = _write_cache(self.cache_path, plan, log)
            took = time.perf_counter() - started
            log(f'built the TensorRT {trt.__version__} {precision} engine for {gpu} in {took:.1f} s'
                + (f', cached at {self.cache_path}' if stored else ''))
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise RuntimeError('TensorRT could not load the engine it just built')
        self._engine = engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._input, self._output = inputs[0], next(n for n in names if n not in inputs)
        self._input_shape = (1, 3, *(int(s) for s in input_size))
        self._context.set_input_shape(self._input, self._input_shape)
        self._output_shape = tuple(self._context.get_tensor_shape(self._output))

    def _build(self, onnx: bytes, size: tuple[int, int]) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        flags = 0
        explicit = getattr(trt.NetworkDefinitionCreationFlag, 'EXPLICIT_BATCH', None)
        if explicit is not None:  # TensorRT 8; the only mode of TensorRT 10
            flags = 1 << int(explicit)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx):
            errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f'TensorRT cannot parse the exported ONNX: {errors}')
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
        if self.precision == 'fp16':
            fp16 = getattr(trt.BuilderFlag, 'FP16', None)  # deprecated in recent TensorRT, still honoured
            if fp16 is not None:
                config.set_flag(fp16)
        shape = (1, 3, *size)
        profile = builder.create_optimization_profile()
        profile.set_shape(network.get_input(0).name, shape, shape, shape)
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError('TensorRT could not build an engine (see its log above)')
        return bytes(plan)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        x = x.to(self._device, torch.float32).contiguous()
        n = x.shape[0]
        out = torch.empty((n, *self._output_shape[1:]), dtype=torch.float32, device=self._device)
        stream = torch.cuda.current_stream(self._device).cuda_stream
        for i in range(n):
            self._context.set_tensor_address(self._input, x[i:i + 1].data_ptr())
            self._context.set_tensor_address(self._output, out[i:i + 1].data_ptr())
            if not self._context.execute_async_v3(stream):
                raise RuntimeError('TensorRT failed to run the engine')
        return out.permute(0, 3, 1, 2)


def create_engine(backend: str, net: torch.nn.Module, input_size: Sequence[int], *, device: str = 'cpu',
                  precision: str = 'fp32', num_threads: int | None = None,
                  log: Callable[[str], None] | None = None) -> Engine:
    """Build or load the ``backend`` engine ('openvino', 'onnxruntime', 'tensorrt') for a BN-folded network.

    ``log`` gets one line whenever something is built (and how long it took), or a cache
    file could not be used; default: this module's logger. Precision 'int8' (ONNX Runtime and
    OpenVINO) runs the int8 graph ``jetseg-export --int8`` calibrated and cached for this network and
    input size (the newest, if several calibration sets were used); without one it raises
    :class:`BackendUnavailable` saying how to build it: calibration needs a data set, so it is never
    done on the fly.
    """
    import torch

    if backend not in ENGINES:
        raise ValueError(f"'{backend}' is not an engine; engines: {', '.join(ENGINES)}")
    log = log or _logger.info
    net = net.eval().float().cpu()
    size = (int(input_size[0]), int(input_size[1]))
    digest = weights_digest(net)
    if precision == 'int8':
        return _int8_engine(backend, net, size, digest, num_threads, log)
    graph = EngineGraph(net, size, digest, log)  # exported or read only when an engine needs it

    def build() -> Engine:
        if backend == 'onnxruntime':
            return OnnxRuntimeEngine(graph(), num_threads)
        if backend == 'openvino':
            return OpenVINOEngine(graph, net, size, digest, num_threads, log)
        return TensorRTEngine(graph, net, size, digest, torch.device(device), precision, log)

    try:
        return build()
    except BackendUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - each engine has its own error types for a bad model
        if not graph.from_cache:
            raise
        log(f'the cached ONNX graph {graph.path} is unusable ({_first_line(exc)}); exporting it again')
        graph.export()
        return build()


def _int8_engine(backend: str, net: torch.nn.Module, size: tuple[int, int], digest: str,
                 num_threads: int | None, log: Callable[[str], None]) -> Engine:
    """The ``backend`` engine on the cached int8 graph of this network at ``size``."""
    if backend not in INT8_ENGINES:
        raise BackendUnavailable(f"precision 'int8' runs on {' and '.join(INT8_ENGINES)} (CPU), not on "
                                 f"'{backend}'; use precision 'fp16' or 'fp32' there")
    path = find_int8_graph(net, size, digest)
    data = _read_cache(path) if path is not None else None
    if not data:
        h, w = size
        profile = getattr(net, 'profile', 'network')
        raise BackendUnavailable(
            f"no int8 graph of this {profile} checkpoint at {h}x{w} in {cache_dir()}; "
            f"calibrate one first: jetseg-export --int8 --calib-dataset NAME --data-root DIR "
            f"--checkpoint <the same checkpoint> --size {h}x{w}")
    if backend == 'onnxruntime':
        return OnnxRuntimeEngine(data, num_threads, precision='int8')
    return OpenVINOEngine(lambda: data, net, size, digest, num_threads, log, precision='int8',
                          graph_key=path.name)
