"""timm's classifier methods, shared by the GPViT and HLG classifiers.

timm's own tests expect every classifier to report ``head_hidden_size`` (the width ``forward_head``
gives with ``pre_logits``), to hand out its classifier (``get_classifier``) and to replace it
(``reset_classifier(num_classes, global_pool)``): 0 classes leaves the pooled features, and
``global_pool=""`` the unpooled ones.
"""

from __future__ import annotations

from torch import nn


class TimmClassifier:
    """Mixed into an ``nn.Module`` with ``num_features``, ``num_classes``, ``global_pool`` and a linear
    ``head`` on the pooled features (``nn.Identity`` with 0 classes)."""

    num_features: int
    num_classes: int
    global_pool: str
    head: nn.Module

    @property
    def head_hidden_size(self) -> int:
        """Width of the pooled features the head reads."""
        return self.num_features

    def get_classifier(self) -> nn.Module:
        return self.head

    def set_global_pool(self, global_pool: str) -> None:
        """Average pooling (``"avg"``) or none (``""``)."""
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.global_pool = global_pool

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, freshly initialised head for ``num_classes`` (0: none), and pooling if given."""
        if global_pool is not None:
            self.set_global_pool(global_pool)
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes else nn.Identity()
