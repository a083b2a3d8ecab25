"""What every explaining predictor shares: the current session of notebook use, and its queries.

A predictor ``open``s an image into a ``Session`` (servers keep those); ``set_image`` keeps one as the
current session, which the query methods read, as segment-anything's predictor keeps its image.
The segmentation ``Predictor`` and the ``ViTPredictor`` of any timm ViT both build on this.
"""

from __future__ import annotations

from typing import Any

import torch

from workbench.data.image import ImageSource
from workbench.inference.session import Session
from workbench.viz.record import select_sites


class SessionQueries:
    """Mixin: ``open(image) -> Session`` is the subclass's; ``self.model`` has ``attention_sites()``."""

    _current: Session | None = None

    def open(self, image: ImageSource) -> Session:
        raise NotImplementedError

    def set_image(self, image: ImageSource) -> Any:
        """``open`` the image and keep its session as the current one (``self.session``), which the
        query methods below read; returns the prediction."""
        self._current = self.open(image)
        return self._current.prediction

    @property
    def session(self) -> Session:
        """The current session (the last ``set_image``'s, or one set back)."""
        if self._current is None:
            raise ValueError("no image is set: call predictor.set_image(image) first")
        return self._current

    @session.setter
    def session(self, session: Session) -> None:
        if not isinstance(session, Session) or session.predictor is not self:
            raise ValueError("expected a session opened by this predictor (predictor.open or set_image)")
        self._current = session

    def sites(self) -> list[str]:
        """Names of the attention sites a query can name (``model.attention_sites()``)."""
        return list(select_sites(self.model, None))

    # The current session's queries (``Session`` documents them).
    def attention_at(self, y: int, x: int, layer: int | str, head: int | None = None) -> torch.Tensor:
        return self.session.attention_at(y, x, layer, head)

    def group_maps(self, layer: int | str) -> torch.Tensor:
        return self.session.group_maps(layer)

    def rollout_at(self, y: int, x: int, class_token: bool = True) -> torch.Tensor:
        return self.session.rollout_at(y, x, class_token)

    def effective_attention_at(
        self, y: int, x: int, block: int | str, head: int | None = None
    ) -> torch.Tensor:
        return self.session.effective_attention_at(y, x, block, head)

    def group_assignment(self, block: int | str) -> torch.Tensor:
        return self.session.group_assignment(block)
