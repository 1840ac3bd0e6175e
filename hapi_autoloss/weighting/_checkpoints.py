"""AutoWeight's checkpoints beyond its tensors: which method and tasks wrote them (a mismatch is
refused before anything loads), and buffers a method sizes at its first step."""

from __future__ import annotations

from typing import Any

import paddle

from ._buffers import prepare_load
from .base import Weighting


class Checkpoints(paddle.nn.Layer):
    """The base of :class:`~hapi_autoloss.AutoWeight` that holds its checkpoint methods."""

    task_names: list[str]
    weighting: Weighting

    @property
    def method(self) -> str:
        raise NotImplementedError

    def checkpoint_state(self) -> dict[str, Any]:
        """Besides tensors: the method and tasks, to refuse a mismatched checkpoint (the
        method's own state is saved as its layer's)."""
        return {"method": self.method, "tasks": list(self.task_names)}

    def check_checkpoint_state(self, state: dict[str, Any], source: str) -> None:
        """Raise, changing nothing, if ``state`` was saved by another method or other tasks."""
        method, tasks = state.get("method", self.method), list(state.get("tasks", self.task_names))
        if method != self.method or tasks != self.task_names:
            raise ValueError(
                f"{source} was written by AutoWeight(method={method!r}, tasks={tasks}), but this "
                f"loss is AutoWeight(method={self.method!r}, tasks={self.task_names}); loading it "
                "would read one task's (or method's) weights as another's. Fix: build the same loss "
                "(that method, those task names in that order) as the run that saved it."
            )

    def set_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Nothing beyond the check: the method restores its own state."""

    def set_state_dict(self, state_dict: dict[str, Any], use_structured_name: bool = True) -> Any:
        """``paddle.nn.Layer.set_state_dict``, plus the method's buffers sized at its first step."""
        if use_structured_name:
            prepare_load(self, state_dict)
        result = super().set_state_dict(state_dict, use_structured_name)
        self.weighting.state_loaded()
        return result
