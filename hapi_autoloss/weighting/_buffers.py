"""Buffers that loading must size first: a method's buffers sized at its first step (empty until
then), and those whose shape follows what is trained (``Weighting.layout_buffers``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle


def layout_buffers(layer: paddle.nn.Layer) -> set[str]:
    """Structured names of the buffers of ``layer`` whose shape follows the trained layout
    (a method's ``layout_buffers``): loading may change their shape."""
    return {name for name, _ in layer.named_buffers() if name.rpartition(".")[2] in
            getattr(_owner(layer, name), "layout_buffers", ())}


def fit_empty_buffers(layer: paddle.nn.Layer, state: dict[str, Any], layout: bool = True) -> None:
    """Give each empty buffer of ``layer`` (one whose size a method learns at its first step), and
    with ``layout`` each of its :func:`layout_buffers`, the shape of its value in ``state``
    (structured names), so that loading can set it."""
    resized = layout_buffers(layer) if layout else set()
    for name, buf in list(layer.named_buffers()):
        saved = state.get(name)
        if buf is None or saved is None or (int(np.prod(buf.shape)) != 0 and name not in resized):
            continue
        shape = [int(d) for d in saved.shape]
        if shape != list(buf.shape) and len(shape) == len(buf.shape):
            value = paddle.zeros(shape, dtype=buf.dtype)
            _owner(layer, name).register_buffer(name.rpartition(".")[2],
                                                value.cpu() if buf.place.is_cpu_place() else value)


def _owner(layer: paddle.nn.Layer, name: str) -> paddle.nn.Layer:
    owner_name = name.rpartition(".")[0]
    return layer if not owner_name else dict(layer.named_sublayers())[owner_name]
