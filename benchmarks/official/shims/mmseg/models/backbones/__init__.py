"""mmseg.models.backbones shim: no eager imports (``gpvit.py`` is the official file)."""
