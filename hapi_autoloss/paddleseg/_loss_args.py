"""PaddleSeg 2.8's loss arguments as ours take them, or refuse them, before any step."""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
from paddleseg.cvlibs import manager

from .._args import as_real, is_real

# ratio for TopKLoss(thresh=...) without ratio: k = max(ceil(1e-12·n − 1e-6), min_kept) = min_kept for
# every n below 10**12, so only the threshold and min_kept choose the pixels, as in OhemCrossEntropyLoss.
OHEM_RATIO = 1e-12


def topk_ratio(ratio: Any, min_kept: Any, threshold: Any, band: Any) -> tuple[Any, Any]:
    """TopKLoss's ``(ratio, min_kept)``: a threshold without ratio is OhemCrossEntropyLoss's rule (no
    fraction kept); ``min_kept`` alone without ratio is refused, since it means 70% to TopKLoss and
    "thresh 0.7" to a PaddleSeg user."""
    if ratio is not None or band is not None:
        return ratio, 1 if min_kept is None else min_kept
    if threshold is not None:
        return OHEM_RATIO, 1 if min_kept is None else min_kept
    if min_kept is not None:
        raise ValueError(
            f"TopKLoss got min_kept={min_kept!r} without ratio or thresh: OhemCrossEntropyLoss would keep "
            "the pixels below its default thresh 0.7, TopKLoss's default ratio the hardest 70%. Fix: give "
            "thresh (e.g. thresh=0.7) without ratio for OhemCrossEntropyLoss's behaviour (keep the pixels "
            "below thresh, at least min_kept), or ratio= the fraction you mean (e.g. ratio=0.7)."
        )
    return ratio, 1


def ohem_anneal_refusal(rule: str) -> str:
    """Why a TopKLoss on OHEM's rule (``rule``: its ``thresh=...`` or ``threshold=...``) is not annealed."""
    kept = ("the pixels whose loss is above threshold" if rule.startswith("threshold")
            else "the pixels whose probability is below thresh")
    return (f"TopKLoss({rule}) without ratio is OHEM's rule, which has no ratio to anneal. Fix: give "
            f"ratio= to combine both ({kept} and the hardest fraction), or drop the callback.")


def ohem_replacement(loss: Any) -> str:
    """The config that does what this PaddleSeg ``OhemCrossEntropyLoss`` means: TopKLoss on its rule, or
    the plain cross-entropy where that rule keeps every valid pixel (``thresh >= 1``: every probability
    is below it, but for saturated ones at exactly 1.0, whose loss is 0; ``min_kept <= 0``: no mining)."""
    thresh, min_kept = getattr(loss, "thresh", 0.7), getattr(loss, "min_kept", 10000)
    ignore = getattr(loss, "ignore_index", 255)
    if is_real(thresh) and is_real(min_kept) and (thresh >= 1 or min_kept <= 0):
        return (f"{{type: SafeCrossEntropyLoss, ignore_index: {ignore}}} (with thresh={thresh}, min_kept={min_kept} "
                "OhemCrossEntropyLoss keeps every valid pixel: the mean cross-entropy)")
    if is_real(thresh) and is_real(min_kept) and thresh <= 0:
        # No probability is below thresh: only min_kept chooses; ratio 1e-12 is thresh's "no fraction" (above).
        return (f"{{type: TopKLoss, ratio: 1.0e-12, min_kept: {min_kept}, ignore_index: {ignore}}} (with "
                f"thresh={thresh} no probability is below thresh: the {min_kept} hardest pixels)")
    return (f"{{type: TopKLoss, thresh: {thresh}, min_kept: {min_kept}, ignore_index: {ignore}}} (no ratio: "
            "the pixels whose true-class probability is below thresh, at least min_kept of them)")


def check_ce(weight: Any, top_k_percent_pixels: Any, avg_non_ignore: Any, data_format: Any) -> None:
    """Refuse PaddleSeg CrossEntropyLoss arguments that SafeCrossEntropyLoss does not reproduce."""
    if not is_real(top_k_percent_pixels) or not 0 < top_k_percent_pixels <= 1:
        raise ValueError(f"top_k_percent_pixels must lie in (0, 1] (the fraction of pixels kept), got "
                         f"{top_k_percent_pixels!r}. Fix: leave it at 1.0 (every pixel).")
    if top_k_percent_pixels != 1.0:
        weights = "" if weight is None else "; unweighted: TopKLoss does not carry the class weights over"
        raise ValueError(
            f"SafeCrossEntropyLoss does not mine pixels (top_k_percent_pixels={top_k_percent_pixels!r}). "
            f"Fix: use {{type: TopKLoss, ratio: {top_k_percent_pixels}}} (the hardest fraction of the "
            f"non-ignored pixels{weights}) instead, or leave top_k_percent_pixels at 1.0."
        )
    if data_format not in ("NCHW", "NHWC"):
        raise ValueError(f"data_format must be 'NCHW' or 'NHWC', got {data_format!r}. Fix: data_format='NCHW'.")
    if not isinstance(avg_non_ignore, bool):
        raise TypeError(f"avg_non_ignore must be True or False, got {avg_non_ignore!r}. Fix: avg_non_ignore=True.")
    if not avg_non_ignore and weight is not None:
        raise ValueError(
            "avg_non_ignore=False with class weights has no weight for the ignored pixels (PaddleSeg's "
            "one-hot of the ignore label). Fix: avg_non_ignore=True (the weighted mean over the "
            "non-ignored pixels), or drop the weights."
        )


def check_dice_weight(weight: Any) -> list[float] | None:
    """PaddleSeg's DiceLoss ``weight``: one real number per class (a list, tuple or 1-D array, NumPy
    numbers too), or None."""
    if weight is None:
        return None
    try:
        flat = not isinstance(weight, (str, bytes)) and np.ndim(weight) == 1 and len(weight) > 0
    except ValueError:  # ragged, e.g. [1, [2, 3]]
        flat = False
    if not flat:
        raise ValueError(f"weight must be a non-empty 1-D list of per-class numbers, got {weight!r}. "
                         "Fix: e.g. weight=[1.0, 2.0].")
    values = [as_real(w) for w in weight]
    bad = next((i for i, v in enumerate(values) if v is None), None)
    if bad is not None:
        raise ValueError(f"weight[{bad}] is a {type(weight[bad]).__name__} ({weight[bad]!r}), not a number. "
                         "Fix: one real number per class, e.g. weight=[1.0, 2.0].")
    bad = next((i for i, v in enumerate(values) if not math.isfinite(float(v or 0.0))), None)
    if bad is not None:  # the loss would be NaN
        raise ValueError(f"weight[{bad}] is {values[bad]}, not a finite number. Fix: one finite weight per class.")
    return [float(v) for v in values if v is not None]


def with_ignore_index(losses: Any, ignore_index: int | None) -> Any:
    """AutoWeight's ``losses`` with the dataset's ``ignore_index`` added to each config dict that sets
    none and whose class takes one, as PaddleSeg's config checker does to MixedLoss's entries (it gives
    it to AutoWeight itself, not to the dicts inside). Layers and dicts with their own are unchanged.
    """
    if ignore_index is None or not isinstance(losses, (list, tuple)):
        return losses
    out = []
    for loss in losses:
        if isinstance(loss, dict) and "ignore_index" not in loss and loss.get("type") in manager.LOSSES.components_dict:
            if "ignore_index" in inspect.signature(manager.LOSSES[loss["type"]]).parameters:
                loss = {**loss, "ignore_index": ignore_index}
        out.append(loss)
    return out
