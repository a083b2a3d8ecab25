"""The shipped photographs: present, readable by the one reader, licences recorded."""

import pytest

from workbench.data.examples import EXAMPLES_DIR, example_images, example_path
from workbench.data.image import read_image


def test_every_example_is_a_readable_photo_with_its_licence_recorded():
    examples = example_images()
    assert 3 <= len(examples) <= 5
    sources = (EXAMPLES_DIR / "SOURCES.md").read_text()
    for example in examples:
        image = read_image(example.path)
        assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 256
        assert image.std() > 20  # a photograph, not a flat placeholder
        assert example.licence and example.path.name in sources


def test_example_path_names_the_choices():
    assert example_path("coffee").name == "coffee.jpg"
    with pytest.raises(ValueError, match="expected one of astronaut, coffee"):
        example_path("lena")
