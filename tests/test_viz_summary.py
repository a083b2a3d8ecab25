"""Class areas and legend colours, a click's map as a distribution, the clicked region."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.data.classes import Classes
from workbench.viz.summary import attention_distribution, class_areas, clicked_region

CLASSES = Classes(("sky", "road", "car"), ((0, 0, 255), (128, 64, 128), (255, 16, 0)))


def test_class_areas_are_the_present_classes_largest_first():
    labels = np.array([[1, 1, 1, 2], [1, 2, 255, 255]])
    areas = class_areas(labels, CLASSES)
    assert [(a.name, a.pixels) for a in areas] == [("road", 4), ("car", 2)]  # sky absent, 255 ignored
    assert [round(a.percent, 2) for a in areas] == [66.67, 33.33]
    assert areas[0].hex == "#804080" and areas[1].colour == (255, 16, 0)
    assert class_areas(np.full((2, 2), 255), CLASSES) == []
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        class_areas(np.array([[3]]), CLASSES)


def test_attention_distribution_sums_to_one_and_keeps_proportions():
    weights = torch.tensor([[0.5, 0.5], [0.25, 0.0]])
    distribution = attention_distribution(weights)
    assert distribution.sum().item() == pytest.approx(1.0)
    assert distribution[0, 0] == pytest.approx(0.4) and distribution[1, 1] == 0
    for bad, message in (
        (torch.zeros(2, 2), "zero everywhere"),
        (torch.tensor([[1.0, -0.1]]), "non-negative"),
        (torch.tensor([[1.0, float("nan")]]), "finite"),
        (torch.ones(2, 2, 2), r"expected an \(H, W\) map"),
    ):
        with pytest.raises(ValueError, match=message):
            attention_distribution(bad)


def test_the_clicked_region_is_the_connected_part_of_the_class():
    labels = np.array(
        [
            [2, 2, 0, 2],
            [2, 0, 0, 2],
            [0, 0, 1, 1],
        ]
    )
    region = clicked_region(labels, 0, 1)
    assert region.tolist() == [[True, True, False, False], [True, False, False, False], [False] * 4]
    assert clicked_region(labels, 1, 3).sum() == 2  # the other car: same class, not connected
    with pytest.raises(ValueError, match=r"pixel \(3, 0\) is outside the 4x3 label map"):
        clicked_region(labels, 3, 0)
