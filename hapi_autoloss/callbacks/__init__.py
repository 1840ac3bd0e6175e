"""Callbacks for ``paddle.Model.fit``, one concern each."""

from .autoweight import AutoWeightCallback

__all__ = ["AutoWeightCallback"]
