"""Property-based fuzzing of the frame path: message -> RGB (jetseg_ros.image_conversion) -> labels.

Every generated case is either decoded and checked against a reference written here in plain
numpy (and a PNG encoder written here with zlib), or rejected with ImageConversionError and a
reason. Anything else (another exception, a hang, an allocation out of proportion to the
message) fails. The suite runs a small fixed-seed profile; scripts/fuzz_frames.py runs the same
properties with >= 10,000 cases.

Sizes: 1x1 up to 4096 wide or high for decoded frames (pixel count bounded, so the run stays
fast); up to 4096x4096 and beyond for declared sizes whose data is truncated or missing, so
nothing huge is allocated.
"""
from __future__ import annotations

import os
import struct
import time
import tracemalloc
import zlib
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CompressedImage, Image

from jetseg_ros.image_conversion import (
    MAX_COMPRESSED_PIXELS,
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    compressed_to_rgb,
    image_to_rgb,
)

#: Examples per property in the suite (fixed seed).
SUITE_EXAMPLES = {'raw': 250, 'compressed': 150, 'segment': 12}
#: scripts/fuzz_frames.py sets JETSEG_FUZZ_CASES (split in these shares) and JETSEG_FUZZ_SEED.
FUZZ_SHARES = {'raw': 0.55, 'compressed': 0.40, 'segment': 0.05}
FUZZ_CASES = int(os.environ.get('JETSEG_FUZZ_CASES', '0') or 0)
FUZZ_SEED = os.environ.get('JETSEG_FUZZ_SEED', '')
#: A conversion that takes longer than this is a hang (generous: the machine may be loaded).
HANG_S = 20.0
#: Peak Python/numpy allocation allowed per decoded pixel, and per byte of a message.
BYTES_PER_PIXEL_BUDGET = 160
BYTES_PER_INPUT_BYTE_BUDGET = 4
ALLOCATION_SLACK = 2 * 2**20
MAX_DECODED_PIXELS = 1 << 16  # decoded frames in the fuzz: up to 1x4096 .. 256x256

#: What happened, by kind ('raw converted', 'compressed rejected', ...): printed by the script.
OUTCOMES: Counter = Counter()


def _profile(kind: str):
    """The suite's small fixed-seed run, or the script's long one (seeded, so it can be repeated)."""
    examples = max(1, round(FUZZ_CASES * FUZZ_SHARES[kind])) if FUZZ_CASES else SUITE_EXAMPLES[kind]
    chosen = settings(max_examples=examples, derandomize=not FUZZ_SEED, database=None, deadline=None,
                      suppress_health_check=list(HealthCheck), print_blob=False)

    def apply(test):
        test = chosen(test)
        return seed(int(FUZZ_SEED))(test) if FUZZ_SEED else test
    return apply


# ----------------------------------------------------------------------------- reference decoding

_CHANNELS = {'rgb8': (0, 1, 2), 'bgr8': (2, 1, 0), 'rgba8': (0, 1, 2), 'bgra8': (2, 1, 0)}
_BYTES = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1, 'mono16': 2, 'yuv422': 2,
          'uyvy': 2, 'yuv422_yuy2': 2, 'yuyv': 2, 'bayer_rggb8': 1, 'bayer_bggr8': 1,
          'bayer_gbrg8': 1, 'bayer_grbg8': 1}
# (Y0, U, Y1, V) byte positions in a 4-byte pair of pixels.
_YUV = {'yuv422': (1, 0, 3, 2), 'uyvy': (1, 0, 3, 2), 'yuv422_yuy2': (0, 1, 2, 3), 'yuyv': (0, 1, 2, 3)}
# The colour letters of the 2x2 tile, row by row, as the ROS encoding name spells them.
_TILES = {'bayer_rggb8': 'RGGB', 'bayer_bggr8': 'BGGR', 'bayer_gbrg8': 'GBRG', 'bayer_grbg8': 'GRBG'}


def reference_raw(height: int, width: int, step: int, encoding: str, bigendian: bool,
                  data: bytes) -> tuple[np.ndarray | None, int]:
    """(expected RGB or None when the message is malformed, tolerance in grey levels)."""
    enc = encoding.strip().lower()
    if enc not in _BYTES or height < 1 or width < 1:
        return None, 0
    row = width * _BYTES[enc]
    if step < row or len(data) != step * height or (enc in _YUV and width % 2):
        return None, 0
    rows = np.frombuffer(data, np.uint8).reshape(height, step)[:, :row].astype(np.int64)
    if enc in _CHANNELS:
        px = rows.reshape(height, width, _BYTES[enc])
        return np.stack([px[..., c] for c in _CHANNELS[enc]], axis=-1), 0
    if enc == 'mono8':
        return np.stack([rows] * 3, axis=-1), 0
    if enc == 'mono16':
        hi, lo = (rows[:, 0::2], rows[:, 1::2]) if bigendian else (rows[:, 1::2], rows[:, 0::2])
        grey = np.floor((hi * 256 + lo) * 255 / 65535 + 0.5)
        return np.stack([grey] * 3, axis=-1), 0
    if enc in _YUV:
        quad = rows.reshape(height, width // 2, 4).astype(np.float64)
        iy0, iu, iy1, iv = _YUV[enc]
        y = np.stack([quad[..., iy0], quad[..., iy1]], axis=-1).reshape(height, width)
        u = np.repeat(quad[..., iu], 2, axis=1) - 128
        v = np.repeat(quad[..., iv], 2, axis=1) - 128
        luma = 1.164 * (np.maximum(y, 16) - 16)
        rgb = np.stack([luma + 1.596 * v, luma - 0.392 * u - 0.813 * v, luma + 2.017 * u], axis=-1)
        return np.clip(np.floor(rgb + 0.5), 0, 255), 1
    return _reference_bayer(rows, _TILES[enc]), 1


def _reference_bayer(raw: np.ndarray, tile: str) -> np.ndarray:
    """Bilinear demosaicing as a plain mean: a missing colour is the mean of the samples of that
    colour in the 3x3 window (0 when there is none, e.g. blue in a 1-pixel-high RGGB row)."""
    h, w = raw.shape
    colour = np.empty((h, w), '<U1')
    for i, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        colour[dy::2, dx::2] = tile[i]
    padded = np.pad(raw, 1)
    padded_colour = np.pad(colour, 1, constant_values='-')
    out = np.zeros((h, w, 3))
    for c, letter in enumerate('RGB'):
        total = np.zeros((h, w))
        count = np.zeros((h, w))
        for dy in range(3):
            for dx in range(3):
                here = padded_colour[dy:dy + h, dx:dx + w] == letter
                total += np.where(here, padded[dy:dy + h, dx:dx + w], 0)
                count += here
        mean = np.where(count > 0, total / np.maximum(count, 1), 0)
        out[..., c] = np.where(colour == letter, raw, np.floor(mean + 0.5))
    return out


# ----------------------------------------------------------------------------- PNG / JPEG makers

def png_bytes(width: int, height: int, colour_type: int, depth: int, rows: list[bytes],
              palette: bytes = b'', idat: bytes | None = None) -> bytes:
    """A PNG written from the specification (filter 0 on every row), independent of Pillow."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))

    header = struct.pack('>IIBBBBB', width, height, depth, colour_type, 0, 0, 0)
    if idat is None:
        idat = zlib.compress(b''.join(b'\0' + r for r in rows))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + (chunk(b'PLTE', palette) if palette else b'')
            + chunk(b'IDAT', idat) + chunk(b'IEND', b''))


# colour type -> (samples per pixel, bit depths)
_PNG_TYPES = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (1, (1, 2, 4, 8)), 4: (2, (8, 16)),
              6: (4, (8, 16))}


def _pack_rows(samples: np.ndarray, depth: int) -> list[bytes]:
    """Rows of PNG samples (H, W*spp) as bytes: big-endian 16 bit, or packed below 8 bits."""
    if depth == 16:
        return [r.astype('>u2').tobytes() for r in samples]
    if depth == 8:
        return [r.astype(np.uint8).tobytes() for r in samples]
    bits = ((samples[..., None] >> np.arange(depth - 1, -1, -1)) & 1).reshape(samples.shape[0], -1)
    return [np.packbits(r.astype(np.uint8)).tobytes() for r in bits]


def reference_png(samples: np.ndarray, colour_type: int, depth: int,
                  palette: np.ndarray) -> tuple[np.ndarray, int]:
    """Expected RGB of a PNG from its samples (H, W, spp); 16-bit colour may be cut to its high
    byte by the decoder instead of rounded, so it gets a tolerance of 1."""
    s = samples.astype(np.int64)
    if colour_type == 3:
        return palette[s[..., 0]], 0
    top = (1 << depth) - 1
    if colour_type in (0, 4):
        grey = np.floor(s[..., 0] * 255 / top + 0.5)
        return np.stack([grey] * 3, axis=-1), 0 if colour_type == 0 else 1
    rgb = np.floor(s[..., :3] * 255 / top + 0.5)
    return rgb, 1 if depth == 16 else 0


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(H, W) from a PNG IHDR or a JPEG SOF marker, read by hand; None if there is none."""
    if data.startswith(b'\x89PNG\r\n\x1a\n') and len(data) >= 24 and data[12:16] == b'IHDR':
        w, h = struct.unpack('>II', data[16:24])
        return h, w
    if data.startswith(b'\xff\xd8'):
        i = 2
        while i + 9 <= len(data):
            if data[i] != 0xFF:
                return None
            marker, length = data[i + 1], struct.unpack('>H', data[i + 2:i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                h, w = struct.unpack('>HH', data[i + 5:i + 9])
                return h, w
            i += 2 + length
    return None


def jpeg_with_declared_size(height: int, width: int) -> bytes:
    """A small real JPEG whose SOF0 claims another size (a decompression bomb, or a lie)."""
    ok, buf = cv2.imencode('.jpg', np.zeros((8, 8, 3), np.uint8))
    data = bytearray(buf.tobytes())
    i = 2
    while data[i + 1] != 0xC0:
        i += 2 + struct.unpack('>H', data[i + 2:i + 4])[0]
    data[i + 5:i + 9] = struct.pack('>HH', height, width)
    return bytes(data)


# ----------------------------------------------------------------------------- running one case

@dataclass
class Outcome:
    rgb: np.ndarray | None
    error: str | None
    seconds: float
    peak_bytes: int


def run_guarded(convert, msg) -> Outcome:
    """Convert with the time and the peak Python/numpy allocation measured; only
    ImageConversionError is an acceptable failure (anything else propagates)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    try:
        rgb, error = convert(msg), None
    except ImageConversionError as exc:
        rgb, error = None, str(exc)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    if started:
        tracemalloc.stop()
    assert seconds < HANG_S, f'conversion took {seconds:.1f} s'
    return Outcome(rgb, error, seconds, peak)


def _check_decoded(out: Outcome, expected: np.ndarray, tolerance: int, interior_only: bool = False) -> None:
    assert out.error is None, f'a well-formed frame was rejected: {out.error}'
    rgb = out.rgb
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.shape == expected.shape
    got, want = rgb.astype(np.int64), expected.astype(np.int64)
    if interior_only:  # OpenCV's Bayer borders are its own
        got, want = got[1:-1, 1:-1], want[1:-1, 1:-1]
    if got.size:
        worst = int(np.abs(got - want).max())
        assert worst <= tolerance, f'differs from the reference by {worst} (tolerance {tolerance})'


def _check_rejected(out: Outcome, what: str) -> None:
    assert out.rgb is None, f'{what} was decoded instead of rejected'
    assert out.error and out.error.strip(), 'rejected without a reason'
    assert out.error.isprintable(), f'the reason is not one printable line: {out.error!r}'


# ----------------------------------------------------------------------------- raw images

_UNKNOWN_ENCODINGS = ['32FC1', '16UC1', '8UC3', '8UC1', 'rgb16', 'bgra16', 'mono12', 'jpeg', '', 'nv12',
                      'bayer_rggb16', 'yuv420', 'RGB8 ', ' Mono8', 'BGR8', 'YUYV']


@st.composite
def raw_cases(draw) -> tuple[Image, dict]:
    """An Image message: well-formed (any encoding, padding, endianness, 1x1..4096 on a side) or
    malformed (unknown encoding, declared size up to 4096x4096 and beyond, bad step, truncated or
    oversized data)."""
    supported = st.sampled_from(SUPPORTED_ENCODINGS)
    encoding = draw(st.one_of(supported, supported, supported, supported, st.sampled_from(_UNKNOWN_ENCODINGS),
                              st.text(max_size=12)))
    enc = encoding.strip().lower()
    bpp = _BYTES.get(enc, draw(st.integers(1, 4)))
    shape = draw(st.sampled_from(['small', 'small', 'small', 'line', 'column', 'medium']))
    if shape == 'small':
        height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    elif shape == 'line':
        height, width = draw(st.integers(1, 3)), draw(st.integers(1, 4096))
    elif shape == 'column':
        height, width = draw(st.integers(1, 4096)), draw(st.integers(1, 3))
    else:
        height, width = draw(st.integers(41, 256)), draw(st.integers(41, 256))
    if enc in _YUV and draw(st.integers(0, 9)) and width > 1:
        width -= width % 2  # mostly even widths, so YUV frames are usually decodable
    padding = draw(st.sampled_from([0, 0, 0, 1, 2, 3, 7, 64]))
    step = width * bpp + padding
    fill = draw(st.sampled_from(['random', 'random', 'zeros', 'ones', 'ramp']))
    seed = draw(st.integers(0, 2**32 - 1))
    n = step * height
    rng = np.random.default_rng(seed)
    if fill == 'random':
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    elif fill == 'ramp':
        data = (np.arange(n) % 256).astype(np.uint8).tobytes()
    else:
        data = (b'\0' if fill == 'zeros' else b'\xff') * n
    fault = draw(st.sampled_from(['none'] * 12 + ['truncate', 'extend', 'big_height', 'big_width', 'huge',
                                                 'step_short', 'step_zero', 'step_huge', 'zero_size']))
    if fault == 'truncate':
        data = data[:draw(st.integers(0, max(n - 1, 0)))]
    elif fault == 'extend':
        data += bytes(draw(st.integers(1, 100)))
    elif fault == 'big_height':
        height = draw(st.integers(height + 1, max(height + 1, 4096)))
    elif fault == 'big_width':
        width = draw(st.integers(width + 1, max(width + 1, 4096)))
        step = max(step, width * bpp) if draw(st.booleans()) else step
    elif fault == 'huge':
        height, width = draw(st.integers(1, 2**32 - 1)), draw(st.integers(1, 2**32 - 1))
        step = draw(st.sampled_from([step, (width * bpp) % 2**32, 2**32 - 1]))
    elif fault == 'step_short':
        step = draw(st.integers(0, max(width * bpp - 1, 0)))
    elif fault == 'step_zero':
        step = 0
    elif fault == 'step_huge':
        step = draw(st.integers(step, 2**32 - 1))
    elif fault == 'zero_size':
        height, width = draw(st.sampled_from([(0, width), (height, 0), (0, 0)]))
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=int(draw(st.booleans())),
                step=step)
    msg.data = data
    return msg, {'fault': fault, 'encoding': encoding}


def check_raw_case(msg: Image, info: dict) -> Outcome:
    """Decode one message and check it against the reference (or check that it was refused)."""
    data = bytes(msg.data)
    expected, tolerance = reference_raw(msg.height, msg.width, msg.step, msg.encoding,
                                        bool(msg.is_bigendian), data)
    out = run_guarded(image_to_rgb, msg)
    if expected is None:
        _check_rejected(out, f"a malformed image ({info['fault']}, {msg.encoding!r})")
        assert out.peak_bytes <= BYTES_PER_INPUT_BYTE_BUDGET * len(data) + ALLOCATION_SLACK, \
            f'refusing {len(data)} bytes allocated {out.peak_bytes}'
        OUTCOMES['raw rejected'] += 1
        return out
    enc = msg.encoding.strip().lower()
    opencv_border = enc.startswith('bayer') and min(msg.height, msg.width) >= 3
    _check_decoded(out, expected, tolerance, interior_only=opencv_border)
    budget = BYTES_PER_PIXEL_BUDGET * msg.height * msg.width + 4 * len(data) + ALLOCATION_SLACK
    assert out.peak_bytes <= budget, f'decoding {msg.width}x{msg.height} allocated {out.peak_bytes} bytes'
    OUTCOMES['raw converted'] += 1
    return out


@_profile('raw')
@given(raw_cases())
def test_raw_images_decode_like_the_reference_or_are_rejected_with_a_reason(case):
    check_raw_case(*case)


# ----------------------------------------------------------------------------- compressed images

_FORMATS = ['jpeg', 'png', 'rgb8; jpeg compressed bgr8', 'mono16; png compressed',
            'bgr8; png compressed rgb8', 'JPEG', '', 'tiff', '16UC1; compressedDepth png']


@st.composite
def compressed_cases(draw) -> tuple[CompressedImage, dict]:
    """A CompressedImage: a valid PNG (every colour type and bit depth) or JPEG, random bytes (with
    and without a JPEG/PNG signature), a damaged valid payload, or a header declaring a huge size."""
    kind = draw(st.sampled_from(['png', 'png', 'png', 'jpeg', 'jpeg', 'random', 'damaged', 'bomb']))
    fmt = draw(st.one_of(st.sampled_from(_FORMATS), st.text(max_size=80)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    info: dict = {'kind': kind}
    if kind in ('png', 'damaged') and draw(st.booleans()) or kind == 'png':
        colour_type = draw(st.sampled_from(sorted(_PNG_TYPES)))
        spp, depths = _PNG_TYPES[colour_type]
        depth = draw(st.sampled_from(depths))
        height, width = draw(st.integers(1, 48)), draw(st.integers(1, 48))
        samples = rng.integers(0, 1 << depth, (height, width, spp))
        palette = np.zeros((0, 3), np.int64)
        if colour_type == 3:
            palette = rng.integers(0, 256, (1 << depth, 3))
        data = png_bytes(width, height, colour_type, depth,
                         _pack_rows(samples.reshape(height, -1), depth),
                         palette=palette.astype(np.uint8).tobytes())
        info.update(samples=samples, colour_type=colour_type, depth=depth, palette=palette)
    elif kind in ('jpeg', 'damaged'):
        height, width = draw(st.integers(1, 64)), draw(st.integers(1, 64))
        grey = draw(st.booleans())
        image = rng.integers(0, 256, (height, width) if grey else (height, width, 3), dtype=np.uint8)
        ok, buf = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, draw(st.integers(5, 100))])
        assert ok
        data = buf.tobytes()
        info['kind'] = 'jpeg' if kind == 'jpeg' else 'damaged'
    elif kind == 'random':
        prefix = draw(st.sampled_from([b'', b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n',
                                       b'\xff\xd8\xff\xe0\x00\x10JFIF\x00', b'GIF89a', b'BM',
                                       b'II*\x00', b'RIFF']))
        data = prefix + draw(st.binary(max_size=600))
    else:  # bomb: a header that declares a huge picture over a tiny payload
        height, width = draw(st.sampled_from([(4096, 4096), (4097, 8192), (20000, 20000), (65535, 65535),
                                              (1, 2**31 - 1), (2**31 - 1, 1), (5000, 7000)]))
        if draw(st.booleans()):
            depth = draw(st.sampled_from([8, 16]))
            idat = zlib.compress(bytes(draw(st.integers(0, 5000))))
            data = png_bytes(width, height, draw(st.sampled_from([0, 2])), depth, [], idat=idat)
        else:  # a JPEG side is at most 65535
            height, width = min(height, 65535), min(width, 65535)
            data = jpeg_with_declared_size(height, width)
        info['declared'] = (height, width)
    if kind == 'damaged':
        how = draw(st.sampled_from(['truncate', 'flip', 'append', 'zero_tail']))
        if how == 'truncate':
            data = data[:draw(st.integers(0, len(data) - 1))]
        elif how == 'flip':
            buf = bytearray(data)
            for _ in range(draw(st.integers(1, 8))):
                i = draw(st.integers(0, len(buf) - 1))
                buf[i] ^= 1 << draw(st.integers(0, 7))
            data = bytes(buf)
        elif how == 'append':
            data += draw(st.binary(min_size=1, max_size=64))
        else:
            cut = draw(st.integers(0, len(data) - 1))
            data = data[:cut] + bytes(len(data) - cut)
        info['how'] = how
    msg = CompressedImage(format=fmt)
    msg.data = data
    return msg, info


def check_compressed_case(msg: CompressedImage, info: dict) -> Outcome:
    """Decode one message and check it against the reference (or check that it was refused)."""
    data = bytes(msg.data)
    out = run_guarded(compressed_to_rgb, msg)
    kind = info['kind']
    if 'compresseddepth' in msg.format.lower():
        _check_rejected(out, 'a compressedDepth image')
    elif kind == 'png':
        expected, tolerance = reference_png(info['samples'], info['colour_type'], info['depth'],
                                            info['palette'])
        _check_decoded(out, expected, tolerance)
    elif kind == 'jpeg':
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        _check_decoded(out, decoded[..., ::-1], 2)  # OpenCV's own libjpeg, BGR
    elif kind == 'random':
        _check_rejected(out, 'random bytes')
    elif kind == 'bomb':
        height, width = info['declared']
        if height * width > MAX_COMPRESSED_PIXELS:
            _check_rejected(out, f'a {width}x{height} decompression bomb')
            assert 'too large' in out.error and 'pixels' in out.error, out.error
        elif out.rgb is not None:  # libjpeg fills a scan that ends early (grey), as with damaged data
            assert out.rgb.shape == (height, width, 3) and data.startswith(b'\xff\xd8')
        else:  # the payload holds at most a few rows: truncated
            _check_rejected(out, f'a truncated {width}x{height} picture')
    else:  # damaged: refused, or decoded at the size its header declares (corrupt JPEG data decodes)
        if out.rgb is not None:
            assert out.rgb.dtype == np.uint8 and out.rgb.ndim == 3 and out.rgb.shape[2] == 3
            assert out.rgb.shape[:2] == declared_size(data), 'decoded at a size its header does not declare'
        else:
            _check_rejected(out, 'damaged data')
    if out.rgb is not None:
        budget = BYTES_PER_PIXEL_BUDGET * out.rgb.shape[0] * out.rgb.shape[1]
    else:
        budget = 0
    assert out.peak_bytes <= budget + BYTES_PER_INPUT_BYTE_BUDGET * len(data) + ALLOCATION_SLACK, \
        f'{kind}: {len(data)} bytes allocated {out.peak_bytes}'
    OUTCOMES[f"compressed {'converted' if out.rgb is not None else 'rejected'}"] += 1
    return out


@_profile('compressed')
@given(compressed_cases())
def test_compressed_images_decode_like_the_reference_or_are_rejected_with_a_reason(case):
    check_compressed_case(*case)


# ----------------------------------------------------------------------------- through the segmenter

def segment_case(segmenter, msg: Image | CompressedImage, info: dict) -> None:
    """A frame the fuzz produced, decoded or refused, then segmented: labels at the frame's size."""
    out = (check_compressed_case if isinstance(msg, CompressedImage) else check_raw_case)(msg, info)
    if out.rgb is None:
        return
    seg = segmenter.segment(out.rgb)
    assert seg.labels.shape == out.rgb.shape[:2] and seg.labels.dtype == np.uint8
    assert int(seg.labels.max()) < segmenter.num_classes
    OUTCOMES['segmented'] += 1


@pytest.fixture(scope='module')
def segmenter(tiny_checkpoint):
    from jetseg_core.inference import Segmenter

    return Segmenter.from_checkpoint(str(tiny_checkpoint), device='cpu')


@_profile('segment')
@given(st.one_of(raw_cases(), compressed_cases()))
def test_fuzzed_frames_that_decode_segment_to_labels_of_their_size(segmenter, case):
    segment_case(segmenter, *case)


# ----------------------------------------------------------------------------- findings, fixed

def _png_message(data: bytes) -> CompressedImage:
    msg = CompressedImage(format='png')
    msg.data = data
    return msg


@pytest.mark.parametrize('side', [8192, 20000])
def test_compressed_picture_larger_than_the_limit_is_refused_before_decoding(side):
    # Declared over a few hundred bytes: Pillow would allocate 200 MB (8192^2 RGB, under its own
    # bomb limit) or refuse with its own words (20000^2).
    data = png_bytes(side, side, 2, 8, [], idat=zlib.compress(bytes(1000)))
    out = run_guarded(compressed_to_rgb, _png_message(data))
    _check_rejected(out, 'a decompression bomb')
    assert 'too large' in out.error and str(MAX_COMPRESSED_PIXELS) in out.error and out.seconds < 2.0
    if side == 8192:
        assert '8192x8192' in out.error


def test_random_bytes_never_reach_pillows_other_format_readers():
    # Pillow's open() tries every plugin it knows; a few bytes that look like a GIF, TIFF or DDS
    # header then go through readers the node never needs (and which raise their own error types).
    for data in (b'GIF89a', b'II*\x00' + bytes(20), b'DDS |' + bytes(200), b'BM' + bytes(60)):
        out = run_guarded(compressed_to_rgb, _png_message(data))
        _check_rejected(out, f'{data[:4]!r}')
        assert 'not a readable JPEG or PNG' in out.error


def test_compressed_bomb_just_under_the_limit_is_decoded():
    # A real one: 4096x4096 zeros compress to ~50 kB and decode to 48 MB.
    width = 4096
    data = png_bytes(width, width, 0, 8, [], idat=zlib.compress(bytes((width + 1) * width), 9))
    assert len(data) < 100_000
    rgb = compressed_to_rgb(_png_message(data))
    assert rgb.shape == (width, width, 3) and not rgb.any()


def test_palette_png_without_its_palette_is_refused():
    # Pillow decodes it to black; the specification requires PLTE for colour type 3.
    data = png_bytes(4, 3, 3, 8, [bytes(4)] * 3)
    out = run_guarded(compressed_to_rgb, _png_message(data))
    _check_rejected(out, 'a palette PNG without PLTE')
    assert 'palette' in out.error


@pytest.mark.parametrize('text', ['rgb8\n[ERROR] [jetseg]: forged line', '\x1b[31mred', 'x' * 5000],
                         ids=['newline', 'terminal_escape', 'five_thousand_chars'])
def test_reasons_stay_one_printable_line_whatever_the_message_fields_hold(text):
    # A reason goes into the node's log: a newline or a terminal escape from a camera's encoding or
    # format field would forge or hide lines, and a megabyte field would flood it.
    raw = Image(height=1, width=1, encoding=text, step=3)
    raw.data = bytes(3)
    compressed = CompressedImage(format=text + ' compressedDepth')
    compressed.data = b'junk'
    for convert, msg in ((image_to_rgb, raw), (compressed_to_rgb, compressed)):
        out = run_guarded(convert, msg)
        _check_rejected(out, repr(text[:20]))
        assert len(out.error) < 400
