"""One pixel <-> token convention: a click and a painted map agree on every pixel's token."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from workbench.models.explain import TokenGrid, View, resize_nearest

# (image, view) sizes where painting by floor and clicking by centre disagree, plus random ones.
_RESIZES = [((375, 500), (512, 683)), ((500, 375), (683, 512)), ((1080, 1920), (512, 910))]


def _cases(count: int, seed: int = 0) -> list[tuple]:
    """(image size, view, stride, padded model input) tuples: whole, flipped and windowed views."""
    rng = random.Random(seed)
    sizes = list(_RESIZES)
    while len(sizes) < count:
        sizes.append(tuple((rng.randint(17, 1200), rng.randint(17, 1200)) for _ in range(2)))
    cases = []
    for image, view_size in sizes:
        stride, flip = rng.choice((4, 8, 16, 32)), rng.random() < 0.5
        if rng.random() < 0.3:  # a sliding window: a crop of the scaled image
            crop = tuple(rng.randint(1, side) for side in view_size)
            offset = tuple(rng.randint(0, side - c) for side, c in zip(view_size, crop, strict=True))
            view = View(view_size, flip, offset, crop)
        else:
            view = View(view_size, flip)
        visible = view.crop or view.size
        padded = tuple(side + rng.choice((0, (-side) % stride)) for side in visible)
        cases.append((image, view, stride, padded))
    return cases


@pytest.mark.parametrize(("image_size", "view", "stride", "model_input"), _cases(60))
def test_the_token_a_click_picks_is_the_token_painted_at_that_pixel(image_size, view, stride, model_input):
    rows, cols = (-(-side // stride) for side in model_input)
    tokens = TokenGrid(rows, cols, stride, model_input)
    index = torch.arange(1, rows * cols + 1, dtype=torch.float32).reshape(rows, cols)  # 0: not seen
    painted = view.to_image(tokens.to_image(index), image_size, mode="nearest")
    assert painted.shape == image_size
    height, width = image_size
    lines = [(y, x) for x in (0, width // 3, width - 1) for y in range(height)]
    lines += [(y, x) for y in (0, height // 2, height - 1) for x in range(width)]
    for y, x in lines:
        try:
            row, col = tokens.token_at(*view.from_image(y, x, image_size))
        except ValueError:  # outside a window: nothing is painted there either
            assert painted[y, x] == 0, (y, x)
            continue
        assert painted[y, x] == row * cols + col + 1, (y, x)


def test_nearest_is_the_centre_rule_of_nearest_exact_computed_exactly():
    maps = torch.arange(375.0 * 500).reshape(375, 500)
    resized = resize_nearest(maps, (512, 683))
    torch.testing.assert_close(
        resized, F.interpolate(maps[None, None], (512, 683), mode="nearest-exact")[0, 0]
    )
    view = View((512, 683))
    assert torch.equal(
        view.to_image(resized, (375, 500), mode="nearest"),
        view.to_image(resized, (375, 500), mode="nearest-exact"),
    )
    # F.interpolate computes the centres in float: at thousands of pixels it can take the neighbour
    # (row 2567 of 5777 -> 4931 has its centre at 3007.9999, in row 3007; float says 3008).
    column = torch.arange(5777.0)[:, None]
    assert resize_nearest(column, (4931, 1))[2567, 0] == 3007
