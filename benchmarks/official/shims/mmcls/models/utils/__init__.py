"""mmcls.models.utils shim: re-exports the two helpers GPViT uses from the official
``embed.py`` / ``helpers.py`` (the real ``__init__`` also imports attention, augmentation, ...)."""

from .embed import resize_pos_embed  # noqa: F401  (official file)
from .helpers import to_2tuple  # noqa: F401  (official file)
