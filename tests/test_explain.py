"""Pixel <-> token <-> image: the one mapping every family and every view goes through."""

from __future__ import annotations

import pytest
import torch

from workbench.models.explain import CrossLayout, TokenGrid, View, WindowLayout

from .tiny import tiny_gpvit_segmentor, tiny_setr, tiny_setr_hlg


@pytest.mark.parametrize(("stride", "size"), [(16, (48, 80)), (8, (50, 37)), (4, (50, 37)), (32, (50, 37))])
def test_a_one_hot_token_comes_back_to_its_pixel_block_cropped_at_the_padding(stride, size):
    rows, cols = -(-size[0] // stride), -(-size[1] // stride)  # the grid overhangs odd sizes
    tokens = TokenGrid(rows, cols, stride, size)
    for row, col in ((0, 0), (rows - 1, cols - 1), (rows // 2, cols // 3)):
        one_hot = torch.zeros(rows, cols)
        one_hot[row, col] = 1
        image = tokens.to_image(one_hot)
        assert image.shape == size
        expected = torch.zeros(size)
        expected[row * stride : (row + 1) * stride, col * stride : (col + 1) * stride] = 1
        torch.testing.assert_close(image, expected)
        # ... and every pixel of that block maps back to the token.
        bottom, right = min((row + 1) * stride, size[0]) - 1, min((col + 1) * stride, size[1]) - 1
        assert tokens.token_at(row * stride, col * stride) == tokens.token_at(bottom, right) == (row, col)
    with pytest.raises(ValueError, match="outside"):
        tokens.token_at(size[0], 0)


@pytest.mark.parametrize(
    ("build", "size", "grids"),
    [
        (lambda: tiny_setr("setr_naive_vit_base"), (48, 80), {16: (3, 5)}),
        (lambda: tiny_gpvit_segmentor("segformer"), (50, 37), {8: (7, 5)}),
        (lambda: tiny_setr_hlg(), (50, 37), {4: (13, 10), 8: (7, 5), 16: (4, 3), 32: (2, 2)}),
    ],
)
def test_every_recorded_site_knows_its_grid_stride_and_input(build, size, grids):
    from workbench.viz import record

    model = build().eval()
    with torch.no_grad(), record(model) as rec:
        model(torch.randn(1, 3, *size))
    for name, attention in rec.attention.items():
        tokens = attention.tokens
        assert tokens.image_size == size, name
        assert (tokens.rows, tokens.cols) == grids[tokens.stride] == attention.grid, name


def test_a_view_maps_image_pixels_through_scale_flip_and_window():
    image_size = (100, 60)
    whole = View((50, 30))
    assert whole.from_image(0, 0, image_size) == (0, 0)
    assert whole.from_image(99, 59, image_size) == (49, 29)
    flipped = View((50, 30), flip=True)
    assert flipped.from_image(10, 0, image_size) == (5, 29)
    window = View((50, 30), offset=(20, 10), crop=(30, 20))
    assert window.from_image(60, 40, image_size) == (10, 10)
    with pytest.raises(ValueError, match="outside this view's 30x20 window"):
        window.from_image(0, 0, image_size)
    # Back to the image: a marked pixel of the view lands where the image pixel was.
    marked = torch.zeros(30, 20)
    marked[10, 10] = 1
    on_image = window.to_image(marked, image_size, mode="nearest")
    assert on_image.shape == image_size and on_image[60:62, 40:42].eq(1).all() and on_image.sum() == 4
    unflipped = flipped.to_image(torch.eye(50, 30), (50, 30))
    torch.testing.assert_close(unflipped, torch.eye(50, 30).flip(-1))


def test_window_layouts_place_a_query_row_in_its_window_and_global_rows_over_their_windows():
    plain = WindowLayout((5, 7), size=(3, 4), count=(2, 2))
    window, position = plain.locate(4, 5)
    assert (window, position) == (3, 1 * 4 + 1)
    keys = torch.arange(12.0)
    placed = plain.place(keys, window)
    assert placed.shape == (5, 7) and placed[3:5, 4:7].flatten().tolist() == [0, 1, 2, 4, 5, 6]
    dilated = WindowLayout((6, 6), size=(3, 3), count=(2, 2), dilated=True)
    window, position = dilated.locate(3, 4)  # row 3 = 1 + 1*2, col 4 = 0 + 2*2
    assert (window, position) == (1 * 2 + 0, 1 * 3 + 2)
    assert dilated.place(torch.ones(9), window)[1::2, 0::2].eq(1).all()
    to_windows = CrossLayout((5, 7), key_shape=(2, 2), windows=plain)
    painted = to_windows.on_grid(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert painted[0, 0] == 1 and painted[0, 6] == 2 and painted[4, 0] == 3 and painted[4, 6] == 4
