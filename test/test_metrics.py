import math

import numpy as np
import pytest
import torch

from jetseg_core.metrics import ConfusionMatrix, format_iou_table


def test_iou_of_a_small_hand_computed_example():
    # 3 classes; truth and prediction of 8 pixels (255 ignored).
    target = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 255]])
    pred = torch.tensor([[0, 0, 1, 1, 1, 2, 0, 2]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    report = cm.compute()
    # class 0: TP 2, FP 1 (a 2 predicted as 0), FN 1 -> 2/4
    # class 1: TP 2, FP 1, FN 0 -> 2/3;  class 2: TP 1, FP 0 (the ignored pixel), FN 1 -> 1/2
    assert report.per_class_iou == pytest.approx([0.5, 2 / 3, 0.5])
    assert report.miou == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert report.pixel_accuracy == pytest.approx(5 / 7)
    assert report.per_class_accuracy == pytest.approx([2 / 3, 1.0, 0.5])
    assert report.absent_classes == [] and report.num_pixels == 7
    assert report.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_iou_accumulates_over_the_set_not_per_image():
    # Image 1: class 1 perfect on 1 pixel. Image 2: class 1 predicted on 3 pixels, true on none.
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([[1, 0, 0, 0]]), torch.tensor([[1, 0, 0, 0]]))
    cm.update(torch.tensor([[1, 1, 1, 0]]), torch.tensor([[0, 0, 0, 0]]))
    report = cm.compute()
    # Set-level class 1: TP 1, FP 3 -> 0.25 (a per-image mean would say (1 + 0) / 2 = 0.5).
    assert report.per_class_iou[1] == pytest.approx(0.25)
    assert report.per_class_iou[0] == pytest.approx(4 / 7)


def test_classes_absent_from_truth_and_prediction_are_left_out_of_the_mean():
    cm = ConfusionMatrix(4)
    cm.update(np.array([[0, 1, 1, 0]]), np.array([[0, 1, 0, 0]]))
    report = cm.compute()
    assert report.absent_classes == [2, 3]
    assert math.isnan(report.per_class_iou[2]) and math.isnan(report.per_class_iou[3])
    assert report.miou == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_logits_are_argmaxed_and_reset_clears():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2] = 1.0
    cm = ConfusionMatrix(3)
    cm.update(logits, torch.full((1, 2, 2), 2))
    assert cm.compute().miou == 1.0
    cm.reset()
    assert cm.compute().num_pixels == 0 and math.isnan(cm.compute().miou)


def test_out_of_range_labels_and_shape_mismatch_are_rejected():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match='outside 0..2'):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match='does not match'):
        cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))


def test_format_iou_table_lists_classes_and_marks_absent_ones():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 0]))
    text = format_iou_table(cm.compute(), ['road', 'car', 'bicyclist'])
    lines = text.splitlines()
    assert any(line.startswith('road') and '66.67' in line for line in lines)
    assert any(line.startswith('car') and '50.00' in line for line in lines)
    assert any(line.startswith('bicyclist') and line.split()[1] == '-' for line in lines)
    assert any(line.startswith('mIoU') and '58.33' in line for line in lines)
    assert 'absent (not in mean): bicyclist' in text
    with pytest.raises(ValueError):
        format_iou_table(cm.compute(), ['road'])
