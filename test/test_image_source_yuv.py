"""image_source with 4:2:2 (YUV) encodings, whose pixels come in pairs: an odd width that the source
derives is made even, an odd width asked for is refused at start-up (real processes over DDS)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from ros_testing import RELIABLE_DEEP, RosHarness, RosProcess, new_domain_id, python_module_command
from sensor_msgs.msg import Image

from jetseg_ros.image_conversion import image_to_rgb

MODULE = 'jetseg_ros.image_source'


def _frames(params: dict, frames: int) -> tuple[list[Image], int, str]:
    domain = new_domain_id()
    with RosHarness(domain) as ros:
        images = ros.record('camera/image_raw', Image, RELIABLE_DEEP)
        with RosProcess(python_module_command(MODULE, {'wait_for_subscribers': 1, **params}), domain) as proc:
            try:
                received = images.wait_for_count(frames, 40)
            except AssertionError as err:
                raise AssertionError(f'{err}\n--- image_source output ---\n{proc.output}') from None
            rc = proc.wait(20)
        return received, rc, proc.output


def test_yuv_with_a_derived_odd_width_sends_the_nearest_even_width() -> None:
    # height 301 at the synthetic 4:3 gives width 401: one pixel narrower keeps the pairs whole.
    images, rc, out = _frames({'source': 'synthetic', 'encoding': 'yuv422', 'height': 301, 'num_frames': 3,
                               'synthetic_scenes': 1, 'rate': 20.0}, frames=3)
    assert rc == 0, out
    assert 'Traceback' not in out
    assert [(m.width, m.height, m.encoding, m.step) for m in images] == [(400, 301, 'yuv422', 800)] * 3
    assert image_to_rgb(images[0]).shape == (301, 400, 3)


def test_yuv_from_a_folder_of_odd_width_pictures_is_sent_at_an_even_width(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    for i in range(2):
        PILImage.fromarray(np.full((40, 61, 3), 60 * (i + 1), np.uint8)).save(tmp_path / f'{i}.png')
    images, rc, out = _frames({'source': 'folder', 'path': str(tmp_path), 'encoding': 'yuyv', 'loop': False,
                               'rate': 20.0}, frames=2)
    assert rc == 0, out
    assert 'Traceback' not in out
    assert [(m.width, m.height) for m in images] == [(60, 40)] * 2
    grey = image_to_rgb(images[1]).reshape(-1, 3).mean(0)
    assert np.abs(grey - 120).max() < 4, grey


def test_yuv_with_an_odd_width_asked_for_exits_2_with_one_line() -> None:
    params = {'source': 'synthetic', 'encoding': 'uyvy', 'width': 401, 'synthetic_scenes': 1}
    with RosProcess(python_module_command(MODULE, params), new_domain_id()) as proc:
        rc = proc.wait(30)
    out = proc.output
    assert rc == 2, out
    errors = [line for line in out.splitlines() if line.startswith('image_source: error:')]
    assert len(errors) == 1, out
    assert 'width 401' in errors[0] and 'uyvy' in errors[0] and 'even' in errors[0]
    assert 'Traceback' not in out
