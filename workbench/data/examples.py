"""Real photographs shipped with the workbench, for the notebooks, the app and quick checks.

    for example in example_images():
        probs = predictor(example.path)

Four photos from scikit-image's sample data (re-encoded as JPEG), each under a permissive licence
recorded here and in ``examples/SOURCES.md``. They carry no labels: the demo models were trained on
generated shapes, so their predictions on photos show what the model makes of real texture, not an
accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXAMPLES_DIR = Path(__file__).with_name("examples")


@dataclass(frozen=True)
class ExampleImage:
    """A shipped photo: ``name``, its file, where it comes from and under which licence."""

    name: str
    path: Path
    source: str
    licence: str


_SKIMAGE = "scikit-image sample data (skimage.data.{})"
EXAMPLES = (
    ("astronaut", "Eileen Collins, NASA Great Images database", "public domain (NASA)"),
    ("coffee", "coffee cup, Rachel Michetti for Pikolo Espresso Bar", "CC0 1.0"),
    ("chelsea", "Chelsea the cat, Stefan van der Walt", "CC0 1.0"),
    ("rocket", "DSCOVR launch on Falcon 9, SpaceX Photos", "public domain (SpaceX)"),
)


def example_images() -> list[ExampleImage]:
    """The shipped photos, in a fixed order (astronaut, coffee, chelsea, rocket)."""
    return [
        ExampleImage(name, EXAMPLES_DIR / f"{name}.jpg", f"{what}; {_SKIMAGE.format(name)}", licence)
        for name, what, licence in EXAMPLES
    ]


def example_path(name: str) -> Path:
    """The file of the shipped photo ``name``; a one-line error lists the names there are."""
    names = [example.name for example in example_images()]
    if name not in names:
        raise ValueError(f"no example photo {name!r}; expected one of {', '.join(names)}")
    return EXAMPLES_DIR / f"{name}.jpg"
