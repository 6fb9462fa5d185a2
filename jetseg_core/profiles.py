"""JetSeg profiles as data: one frozen table of settings per hardware target.

The builder in :mod:`jetseg_core.model` turns a profile into modules, so a new
variant is a new table, never new layer code.
"""
from __future__ import annotations

import operator
import os
from dataclasses import dataclass
from pathlib import Path

MIN_CLASSES = 2
MAX_CLASSES = 255
MIN_INPUT_SIDE = 64
ACTIVATIONS = ('reu', 'tanhexp')


@dataclass(frozen=True)
class JetSegProfile:
    """Settings of one JetSeg variant (paper Table 1 / the authors' arch config).

    Block layout (authors' code for a 512 px input, fixed here so the network does
    not change with the input size): each stage is a list of "growing" JetBlocks,
    each preceded by ``residual_blocks[stage]`` residual JetBlocks. A growing block
    widens the features by the paper's channel rule (S0: b, S1: +b, S2: +2b,
    S3: x2, capped at ``max_channels``) with an expansion of 2x its input (capped
    at ``max_expand_channels``); a residual block keeps its width (expansion 1x).
    """

    name: str
    base_channels: int
    max_channels: int
    max_expand_channels: int
    residual_blocks: tuple[int, int, int, int]
    decoder_width: int
    # Asymmetric (Nx1 then 1xN, dilated) depthwise kernel of the JetConv per stage S0..S3.
    stage_kernels: tuple[int, int, int, int] = (7, 7, 5, 3)
    # Square depthwise kernel that follows the asymmetric pair (carries the stride).
    square_kernel: int = 3
    # Attention after the JetConv, per stage: CBAM in S1, spatial attention in S2, ECA in S3.
    stage_attention: tuple[str | None, str | None, str | None, str | None] = (None, 'cbam', 'sam', 'eca')
    # Resolution of the decoder's shallow branch: 4 -> S1 features (RegSeg style, default);
    # 2 -> S0 features (like the authors' decoder, which runs at 1/2 resolution).
    decoder_stride: int = 4
    # Stride of each growing block per stage: output strides 2, 4, 8, 16 (RegSeg keeps 1/16 too).
    stage_strides: tuple[tuple[int, ...], ...] = ((2,), (2,), (2, 1), (2, 1))

    def grown_channels(self, stage: int, in_channels: int) -> int:
        """Output width of a growing block in ``stage`` (the paper's channel rule, capped)."""
        b = self.base_channels
        out = (b, in_channels + b, in_channels + 2 * b, 2 * in_channels)[stage]
        return min(out, self.max_channels)

    def expand_channels(self, in_channels: int) -> int:
        """Width inside a growing JetBlock: twice its input, capped."""
        return min(2 * in_channels, self.max_expand_channels)

    def stage_channels(self) -> tuple[int, ...]:
        """Output channels of S0..S3."""
        channels, c = [], 3
        for stage, strides in enumerate(self.stage_strides):
            for _ in strides:
                c = self.grown_channels(stage, c)
            channels.append(c)
        return tuple(channels)

    def shallow_head_channels(self) -> int:
        """Width of the decoder's shallow (1/4 or 1/2) head; RegSeg uses 8 for width 128."""
        return max(8, self.decoder_width // 16)


PROFILES: dict[str, JetSegProfile] = {
    'nano': JetSegProfile(
        name='nano', base_channels=8, max_channels=64, max_expand_channels=64,
        residual_blocks=(0, 0, 1, 1), decoder_width=64,
    ),
    'agx': JetSegProfile(
        name='agx', base_channels=16, max_channels=256, max_expand_channels=256,
        residual_blocks=(0, 2, 4, 2), decoder_width=256,
    ),
    'workstation': JetSegProfile(
        name='workstation', base_channels=32, max_channels=512, max_expand_channels=1024,
        residual_blocks=(0, 2, 4, 2), decoder_width=512,
    ),
}


@dataclass(frozen=True)
class RuntimeSettings:
    """How a profile runs fastest: the defaults the node, the CLIs and :class:`Segmenter` apply
    whenever the user sets no value (``num_threads: 0`` / no ``--threads``).

    Thread counts are torch's intra-op threads; 0 means one per core (:func:`one_per_core`, what
    torch picks by itself). Precision is 'auto' for every profile (fp16 on CUDA, fp32 on CPU), so
    it is the one default of every entry point (DEFAULT_PRECISION) rather than a field here.
    """

    threads_on_cpu: int = 0
    threads_on_cuda: int = 0  # CUDA leaves the CPU only decoding and uploads: not measured, torch's default


RUNTIME_SETTINGS: dict[str, RuntimeSettings] = {
    # One thread: the nano network's ~250 ops are too small to split across cores (waking the other
    # thread for each costs more than it saves). On 2 x86 cores one thread had lower latency than
    # two (node at 640x480, 30 Hz: ~10.5 ms inference against ~27 ms on two passively waiting
    # threads) at about 2/3 of their CPU, and the other cores stay free for the rest of the robot.
    'nano': RuntimeSettings(threads_on_cpu=1),
    # Wide enough layers to gain from every core.
    'agx': RuntimeSettings(threads_on_cpu=0),
    'workstation': RuntimeSettings(threads_on_cpu=0),
}
DEFAULT_PRECISION = 'auto'


@dataclass(frozen=True)
class ThreadSetting:
    """A resolved thread count and where it came from ('nano default' or 'requested')."""

    count: int
    source: str

    def __str__(self) -> str:
        return f'{self.count} ({self.source})'


def one_per_core() -> int:
    """The thread count torch picks by itself, worked out rather than read (torch's setting is
    process-wide and anyone may have changed it): OMP_NUM_THREADS or MKL_NUM_THREADS when set,
    else one per physical core this process may run on (hyperthreads share a core's units)."""
    for name in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
        text = os.environ.get(name, '').strip()
        if text.isdigit() and int(text) > 0:
            return int(text)
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f'/sys/devices/system/cpu/cpu{cpu}/topology')
        try:
            cores.add(((topology / 'physical_package_id').read_text(), (topology / 'core_id').read_text()))
        except OSError:
            return max(len(cpus), 1)
    return max(len(cores), 1)


def resolve_thread_setting(profile: str, device: str, requested: int | None = None) -> ThreadSetting:
    """The thread count to run with: ``requested`` when positive, else the profile's best on ``device``.

    A profile without run-time settings (a checkpoint of a custom variant) gets one per core.
    """
    if requested:
        return ThreadSetting(int(requested), 'requested')
    settings = RUNTIME_SETTINGS.get(profile, RuntimeSettings())
    best = settings.threads_on_cuda if str(device).startswith('cuda') else settings.threads_on_cpu
    source = f'{profile} default' if profile in RUNTIME_SETTINGS else 'one per core'
    return ThreadSetting(best or one_per_core(), source)


def apply_thread_setting(profile: str, device: str, requested: int | None = None) -> ThreadSetting:
    """Set torch's process-wide thread count for ``profile`` on ``device``; returns what is in effect.

    The one place jetseg sets it for inference (Segmenter, node, CLIs), so that 'no value' means
    the profile's best everywhere. Call it from the thread that runs inference: a second thread
    that runs parallel ops owns a second OpenMP pool.
    """
    import torch

    wanted = resolve_thread_setting(profile, device, requested)
    if torch.get_num_threads() != wanted.count:
        torch.set_num_threads(wanted.count)
    return ThreadSetting(torch.get_num_threads(), wanted.source)


def get_profile(name: str) -> JetSegProfile:
    """Look a profile up by name; the error lists the valid names."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        valid = ', '.join(sorted(PROFILES))
        raise ValueError(f'unknown JetSeg profile {name!r}; valid profiles: {valid}') from None


def check_num_classes(num_classes: int) -> int:
    """Labels are published as uint8 with 255 reserved for 'ignore', hence 2..255."""
    try:
        n = operator.index(num_classes)  # accepts numpy integers, rejects floats and strings
    except TypeError:
        n = None
    if n is None or isinstance(num_classes, bool) or not MIN_CLASSES <= n <= MAX_CLASSES:
        raise ValueError(
            f'num_classes must be an integer in {MIN_CLASSES}..{MAX_CLASSES}, got {num_classes!r}')
    return n
