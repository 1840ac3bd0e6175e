"""The tqdm bar of ``TqdmProgressBar`` and its values: copied from hapi's logs, labelled (σ_, w_, k), formatted."""

from __future__ import annotations

from typing import Any, Callable

from tqdm import tqdm

from ._readout import _scalar


class LazyBar(tqdm):  # type: ignore[misc]
    """A tqdm bar whose postfix is formatted only when the bar is drawn."""

    def __init__(self, *args: Any, render: Callable[[], str], **kwargs: Any) -> None:
        self._render = render  # before tqdm's __init__, which may draw already
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self) -> dict[str, Any]:
        d = super().format_dict
        # close() sets disable before its last draw, which must show the values too.
        if "postfix" in d:
            d["postfix"] = self._render() or None
        return d


def _label(key: str) -> str:
    if key.startswith("sigma_"):
        return "σ_" + key[len("sigma_"):]
    if key.startswith("weight_"):
        return "w_" + key[len("weight_"):]
    return "k" if key == "topk_ratio" else key


def format_postfix(values: dict[str, float]) -> str:
    return ", ".join(f"{_label(k)}={v:.4g}" for k, v in values.items())


def copy_values(logs: Any, keys: list[str], into: dict[str, float]) -> None:
    """Copy the ``keys`` of ``logs`` that hold a number into ``into``, as floats."""
    # hapi reuses one logs dict for every hook: keep floats, not the dict.
    if not logs:
        return
    for k in keys:
        v = logs.get(k)
        if v is not None:
            f = v if type(v) is float else _scalar(v)
            if f is not None:
                into[k] = f
