"""mmseg.ops shim: ``resize`` / ``Upsample`` from the official ``wrappers.py`` (the real
``__init__`` also imports the Encoding op, unused here)."""

from .wrappers import Upsample, resize  # noqa: F401  (official file)
