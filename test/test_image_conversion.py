"""Image message <-> RGB conversion: every supported encoding against an independent reference."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from jetseg_ros import image_conversion
from jetseg_ros.image_conversion import (
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    compressed_to_rgb,
    image_to_rgb,
    mono_labels_to_image,
    rgb_to_compressed,
    rgb_to_image,
)

H, W = 30, 40


@pytest.fixture(params=['opencv', 'numpy'])
def decoder(request, monkeypatch):
    """YUV and Bayer decode through OpenCV when installed, else numpy: test both paths."""
    if request.param == 'numpy':
        monkeypatch.setattr(image_conversion, '_cv2', None)
    return request.param


def _smooth_rgb(h: int = H, w: int = W) -> np.ndarray:
    """Gradients: bilinear demosaicing and chroma subsampling reproduce them closely."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 / (w - 1), yy * 255 / (h - 1), (xx + yy) * 255 / (w + h - 2)],
                    axis=-1).round().astype(np.uint8)


def _random_rgb(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _raw_image(pixels: np.ndarray, encoding: str, padding: int = 0, bigendian: bool = False) -> Image:
    """Build a message by hand from already-encoded pixel bytes (independent of rgb_to_image)."""
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8).reshape(pixels.shape[0], -1)
    if padding:
        rows = np.concatenate([rows, np.full((rows.shape[0], padding), 0xAB, np.uint8)], axis=1)
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                is_bigendian=int(bigendian), step=rows.shape[1])
    msg.data = np.ascontiguousarray(rows).tobytes()
    return msg


@pytest.mark.parametrize(('encoding', 'order', 'alpha'), [
    ('rgb8', [0, 1, 2], False), ('bgr8', [2, 1, 0], False),
    ('rgba8', [0, 1, 2], True), ('bgra8', [2, 1, 0], True),
])
@pytest.mark.parametrize('padding', [0, 5])
def test_colour_encodings_decode_exactly_with_row_padding(encoding, order, alpha, padding):
    rgb = _random_rgb(1)
    pixels = rgb[..., order]
    if alpha:
        pixels = np.concatenate([pixels, np.full((H, W, 1), 7, np.uint8)], axis=2)
    out = image_to_rgb(_raw_image(pixels, encoding, padding))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('padding', [0, 3])
def test_mono8_is_replicated_to_grey_rgb(padding):
    grey = _random_rgb(2)[..., 0]
    out = image_to_rgb(_raw_image(grey, 'mono8', padding))
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))


@pytest.mark.parametrize('bigendian', [False, True])
def test_mono16_honours_endianness_and_scales_full_range(bigendian):
    values = np.array([[0, 257, 1000, 32768, 65535, 12345]], np.uint16).repeat(4, axis=0)
    pixels = values.astype('>u2' if bigendian else '<u2')
    out = image_to_rgb(_raw_image(pixels, 'mono16', padding=2, bigendian=bigendian))
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert out[0, :5, 0].tolist() == [0, 1, 4, 128, 255]


@pytest.mark.parametrize(('encoding', 'cv_code'), [
    ('yuv422', cv2.COLOR_YUV2RGB_UYVY), ('uyvy', cv2.COLOR_YUV2RGB_UYVY),
    ('yuv422_yuy2', cv2.COLOR_YUV2RGB_YUY2), ('yuyv', cv2.COLOR_YUV2RGB_YUY2),
])
def test_yuv422_matches_opencv_bt601(encoding, cv_code, decoder):
    raw = _random_rgb(3)[..., :2].copy()  # arbitrary (Y, chroma) byte pairs: 2 bytes per pixel
    out = image_to_rgb(_raw_image(raw, encoding, padding=4))
    reference = cv2.cvtColor(raw, cv_code)
    assert np.abs(out.astype(int) - reference).max() <= 2


# ROS Bayer names give the first 2x2 tile; OpenCV names the pattern one pixel further in
# (cv_bridge's mapping).
@pytest.mark.parametrize(('encoding', 'cv_code'), [
    ('bayer_rggb8', cv2.COLOR_BayerBG2RGB), ('bayer_bggr8', cv2.COLOR_BayerRG2RGB),
    ('bayer_gbrg8', cv2.COLOR_BayerGR2RGB), ('bayer_grbg8', cv2.COLOR_BayerGB2RGB),
])
def test_bayer_is_demosaiced_like_opencv_and_recovers_smooth_images(encoding, cv_code, decoder):
    rgb = _smooth_rgb()
    tiles = {'bayer_rggb8': 'RGGB', 'bayer_bggr8': 'BGGR', 'bayer_gbrg8': 'GBRG', 'bayer_grbg8': 'GRBG'}
    tile = tiles[encoding]
    raw = np.empty((H, W), np.uint8)
    for i, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        raw[dy::2, dx::2] = rgb[dy::2, dx::2, 'RGB'.index(tile[i])]
    out = image_to_rgb(_raw_image(raw, encoding, padding=1))
    reference = cv2.cvtColor(raw, cv_code)
    assert np.abs(out[1:-1, 1:-1].astype(int) - reference[1:-1, 1:-1]).max() <= 1  # OpenCV borders differ
    assert np.abs(out[1:-1, 1:-1].astype(int) - rgb[1:-1, 1:-1]).max() <= 2  # linear ramps are exact inside
    assert np.abs(out.astype(int) - rgb).max() <= 12  # edges have half the neighbours


@pytest.mark.parametrize('size', [(2, 2), (2, 64), (64, 2), (2, 3)])
@pytest.mark.parametrize('encoding', ['bayer_rggb8', 'bayer_gbrg8'])
def test_bayer_images_under_three_pixels_high_or_wide_are_demosaiced(encoding, size, decoder):
    # OpenCV's demosaicing returns black for them; the numpy decoder takes over.
    out = image_to_rgb(_raw_image(np.full(size, 100, np.uint8), encoding))
    assert out.shape == (*size, 3) and (out == 100).all()


@pytest.mark.parametrize('encoding', SUPPORTED_ENCODINGS)
def test_every_encoding_round_trips_through_rgb_to_image(encoding, decoder):
    rgb = _smooth_rgb()
    header = Header(frame_id='cam')
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = rgb_to_image(rgb, encoding, header, row_padding=6, bigendian=(encoding == 'mono16'))
    assert (msg.height, msg.width, msg.encoding) == (H, W, encoding)
    assert len(msg.data) == msg.step * msg.height
    assert (msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec) == ('cam', 12, 345)
    out = image_to_rgb(msg)
    if encoding.startswith('mono'):
        luma = np.round(rgb @ np.array([0.299, 0.587, 0.114]))
        assert np.abs(out[..., 1].astype(int) - luma).max() <= 1
    else:
        tolerance = 0 if encoding in ('rgb8', 'bgr8', 'rgba8', 'bgra8') else 12
        assert np.abs(out.astype(int) - rgb).max() <= tolerance


@pytest.mark.parametrize(('mutate', 'problem'), [
    (lambda m: setattr(m, 'encoding', '32FC1'), "unsupported encoding '32FC1'"),
    (lambda m: setattr(m, 'encoding', 'jpeg'), 'unsupported encoding'),
    (lambda m: setattr(m, 'encoding', '8UC3'), "publish with encoding 'bgr8'"),  # cv_bridge's default
    (lambda m: (setattr(m, 'height', 0), setattr(m, 'data', b'')), 'empty image'),
    (lambda m: setattr(m, 'width', 0), 'empty image'),
    (lambda m: setattr(m, 'step', m.width * 3 - 1), 'step'),
    (lambda m: setattr(m, 'data', bytes(m.data)[:-1]), 'data length'),
    (lambda m: setattr(m, 'data', bytes(m.data) + b'\0' * 10), 'data length'),
])
def test_malformed_images_are_rejected_with_the_problem_named(mutate, problem):
    msg = rgb_to_image(_random_rgb(4), 'rgb8')
    mutate(msg)
    with pytest.raises(ImageConversionError, match=problem):
        image_to_rgb(msg)


def test_odd_width_yuv_is_rejected():
    msg = _raw_image(np.zeros((4, 5, 2), np.uint8), 'yuyv')
    with pytest.raises(ImageConversionError, match='odd width 5'):
        image_to_rgb(msg)
    with pytest.raises(ImageConversionError, match='odd width'):
        rgb_to_image(np.zeros((4, 5, 3), np.uint8), 'uyvy')


def test_png_decodes_exactly_and_jpeg_closely():
    rgb = _smooth_rgb()
    np.testing.assert_array_equal(compressed_to_rgb(rgb_to_compressed(rgb, 'png')), rgb)
    jpeg = rgb_to_compressed(rgb, 'jpeg', quality=95)
    assert jpeg.format == 'jpeg'
    assert np.abs(compressed_to_rgb(jpeg).astype(int) - rgb).mean() < 3


def test_16_bit_png_is_scaled_to_8_bits_like_mono16():
    # compressed_image_transport sends mono16 images as 16-bit PNG.
    values = np.array([[0, 257, 40000, 65535]], np.uint16)
    buffer = io.BytesIO()
    PILImage.fromarray(values).save(buffer, 'PNG')
    msg = CompressedImage(format='mono16; png compressed')
    msg.data = buffer.getvalue()
    out = compressed_to_rgb(msg)
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 156, 255] and (out == out[..., :1]).all()


@pytest.mark.parametrize(('fmt', 'data', 'problem'), [
    ('jpeg', b'', 'empty'),
    ('jpeg', b'not a jpeg at all', 'cannot decode'),
    ('png', b'\x89PNG\r\n\x1a\n' + b'\0' * 20, 'cannot decode'),
    ('16UC1; compressedDepth', b'\0' * 20, 'unsupported compressed format'),
])
def test_broken_compressed_images_are_rejected(fmt, data, problem):
    msg = CompressedImage(format=fmt)
    msg.data = data
    with pytest.raises(ImageConversionError, match=problem):
        compressed_to_rgb(msg)


def test_labels_become_mono8_with_the_input_header():
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    header = Header(frame_id='camera_optical')
    header.stamp.sec = 99
    msg = mono_labels_to_image(labels, header)
    assert (msg.encoding, msg.height, msg.width, msg.step) == ('mono8', 3, 4, 4)
    assert (msg.header.frame_id, msg.header.stamp.sec) == ('camera_optical', 99)
    np.testing.assert_array_equal(np.frombuffer(msg.data, np.uint8).reshape(3, 4), labels)
