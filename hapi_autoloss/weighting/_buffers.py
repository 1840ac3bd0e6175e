"""Buffers that loading must size first: a method's buffers sized at its first step (empty until
then), and those whose shape follows what is trained (``Weighting.layout_buffers``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import paddle


def layout_buffers(layer: paddle.nn.Layer) -> dict[str, int]:
    """{structured name: dimension} of the buffers of ``layer`` whose shape follows the trained
    layout along that dimension (a method's ``layout_buffers``): loading may change it."""
    out = {}
    for name, _ in layer.named_buffers():
        dims = getattr(_owner(layer, name), "layout_buffers", {})
        if name.rpartition(".")[2] in dims:
            out[name] = dims[name.rpartition(".")[2]]
    return out


def may_take(here: Sequence[int], saved: Sequence[int], dim: int | None) -> bool:
    """Whether loading may give a buffer of shape ``here`` the ``saved`` shape: one as many
    dimensions, and equal but in its layout dimension ``dim`` (db_mtl's columns: its rows, one per
    task, must agree, before its first step too), or, with no ``dim``, the buffer empty."""
    if len(here) != len(saved):
        return False
    if dim is not None:  # empty or not: its other dimensions are known ([tasks, 0] before the first step)
        return all(a == b for i, (a, b) in enumerate(zip(here, saved)) if i != dim)
    return int(np.prod(here)) == 0


def check_shapes(layer: paddle.nn.Layer, state: dict[str, Any], where: str = "The state dict") -> None:
    """Raise, changing nothing, when ``state`` (structured names) holds a tensor of another shape
    than ``layer``'s that loading may not give it (Paddle's ``set_state_dict`` skips it with a
    warning and trains on: another number of tasks read into db_mtl's history). ``where``: the
    state's source, for the message (``load_state``'s file)."""
    dims = layout_buffers(layer)
    for name, tensor in layer.state_dict().items():
        saved = state.get(name)
        here = list(tensor.shape)
        if saved is not None and list(np.shape(saved)) != here and not may_take(here, np.shape(saved), dims.get(name)):
            raise ValueError(
                f"{where}'s {name} has shape {list(np.shape(saved))}, this loss's {here}: it was "
                "saved by another loss (other tasks or method). Fix: build the same loss as the run that saved it."
            )


def fit_empty_buffers(layer: paddle.nn.Layer, state: dict[str, Any]) -> None:
    """Give each empty buffer of ``layer`` (one whose size a method learns at its first step), and
    with ``layout`` each of its :func:`layout_buffers`, the shape of its value in ``state``
    (structured names), so that loading can set it."""
    dims = layout_buffers(layer)
    for name, buf in list(layer.named_buffers()):
        saved = state.get(name)
        if buf is None or saved is None:
            continue
        shape = [int(d) for d in np.shape(saved)]
        if shape != list(buf.shape) and may_take(list(buf.shape), shape, dims.get(name)):
            value = paddle.zeros(shape, dtype=buf.dtype)
            _owner(layer, name).register_buffer(name.rpartition(".")[2],
                                                value.cpu() if buf.place.is_cpu_place() else value)


def prepare_load(layer: paddle.nn.Layer, state: dict[str, Any]) -> None:
    """Before ``set_state_dict`` of ``state`` (structured names): refuse a shape loading may not give
    (:func:`check_shapes`), then size the buffers that follow the saved one (:func:`fit_empty_buffers`)."""
    check_shapes(layer, state)
    fit_empty_buffers(layer, state)


def _owner(layer: paddle.nn.Layer, name: str) -> paddle.nn.Layer:
    owner_name = name.rpartition(".")[0]
    return layer if not owner_name else dict(layer.named_sublayers())[owner_name]
