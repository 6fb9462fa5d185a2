"""~/camera_info: the camera's calibration re-stamped for the outputs, rescaled at network size."""
from __future__ import annotations

import pytest
from sensor_msgs.msg import CameraInfo, RegionOfInterest
from std_msgs.msg import Header

from jetseg_ros.segmentation_node import scale_camera_info


def _stereo_info() -> CameraInfo:
    """640x480 calibration of the lower camera of a vertical pair, streaming 2x2-binned images."""
    info = CameraInfo(height=480, width=640, distortion_model='plumb_bob', binning_x=2, binning_y=2)
    info.header.frame_id = 'camera_optical'
    info.k = [400.0, 2.0, 320.0, 0.0, 410.0, 240.0, 0.0, 0.0, 1.0]  # a little skew
    info.p = [400.0, 2.0, 320.0, 0.0, 0.0, 410.0, 240.0, -30.0, 0.0, 0.0, 1.0, 0.0]
    info.d = [0.1, -0.05, 0.0, 0.0, 0.0]
    info.roi = RegionOfInterest(x_offset=64, y_offset=48, width=320, height=240, do_rectify=True)
    return info


def _header() -> Header:
    header = Header(frame_id='')
    header.stamp.sec, header.stamp.nanosec = 7, 500
    return header


def test_outputs_at_input_size_keep_the_calibration_and_take_the_image_header():
    info = _stereo_info()
    out = scale_camera_info(info, _header(), None)
    assert (out.header.stamp.sec, out.header.stamp.nanosec) == (7, 500)
    assert out.header.frame_id == 'camera_optical'  # the image had none: the camera's is kept
    assert (out.height, out.width, out.binning_x, out.binning_y) == (480, 640, 2, 2)
    assert list(out.k) == list(info.k) and list(out.p) == list(info.p) and list(out.d) == list(info.d)


def test_outputs_at_network_size_of_a_whole_binned_image_scale_k_and_p():
    info = _stereo_info()
    info.roi = RegionOfInterest()  # the whole sensor, binned 2x2: the node sees 320x240 images
    out = scale_camera_info(info, _header(), (96, 128))
    s = 128 / 640  # output pixels per sensor pixel, whatever the binning
    assert (out.height, out.width) == (96, 128)
    assert list(out.k) == pytest.approx([400 * s, 2 * s, 320 * s, 0, 410 * s, 240 * s, 0, 0, 1])
    assert list(out.p) == pytest.approx(
        [400 * s, 2 * s, 320 * s, 0, 0, 410 * s, 240 * s, -30 * s, 0, 0, 1, 0])
    # K is in the output's pixels: a consumer that divided by the binning would halve it again.
    assert (out.binning_x, out.binning_y) == (0, 0)


def test_outputs_at_network_size_of_a_region_of_interest_are_a_camera_of_their_own():
    # The node sees the 320x240 ROI at (64, 48), binned to 160x120; the outputs cover that ROI.
    out = scale_camera_info(_stereo_info(), _header(), (96, 128))
    s = 128 / 320
    assert list(out.k) == pytest.approx([400 * s, 2 * s, (320 - 64) * s, 0, 410 * s, (240 - 48) * s, 0, 0, 1])
    assert list(out.p) == pytest.approx(
        [400 * s, 2 * s, (320 - 64) * s, 0, 0, 410 * s, (240 - 48) * s, -30 * s, 0, 0, 1, 0])
    roi = out.roi
    assert (out.height, out.width, out.binning_x, out.binning_y) == (96, 128, 0, 0)
    assert (roi.x_offset, roi.y_offset, roi.width, roi.height) == (0, 0, 0, 0)  # the whole output
