"""AutoWeight: one loss layer that weights several losses and learns the weights.

Formulas (L_i is task i's loss, s_i and c_i are learned, one per task):

=========  =====================================================  ==========================
method     term added to the total, per task                      paper
=========  =====================================================  ==========================
kendall    f·e^(−s)·L + ½·s,  f = ½ regression, 1 classification  Kendall, Gal & Cipolla,
           s = log σ²                                             CVPR 2018
simple     e^(−s)·L + s                                           seed 000's code
liebel     L / (2c²) + ln(1 + c²),  c starts at 1                 Liebel & Körner, 2018
imtl_l     e^s·L − s                                              Liu et al., ICLR 2021
                                                                  (IMTL-L)
dwa        w·L, w = n·softmax(r/T), r = L̄(e−1)/L̄(e−2) of the      Liu, Johns & Davison,
           epoch averages, T = 2; w = 1 for the first 2 epochs    CVPR 2019
rlw        w·L, w = softmax(z), z ~ N(0, 1) drawn every step      Lin et al., TMLR 2022
gls        (Π L)^(1/n), the geometric mean                        Chennupati et al.,
                                                                  CVPRW 2019
fixed      w·L with given w (PaddleSeg MixedLoss, e.g. 0.8/0.2)   --
equal      L                                                      --
=========  =====================================================  ==========================

s (or c) is clamped in the forward pass to ``clamp`` so e^(−s) cannot overflow:
by default s ∈ [−10, 10] (σ from 0.0067 to 148) and c ∈ [0.01, 100]. The clamp is
straight-through: beyond a bound the gradient is the one at the bound, so s is
pulled back rather than frozen there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Callable, Union

import numpy as np
import paddle

from . import _hapi

LossFn = Callable[..., paddle.Tensor]
Losses = Union[Sequence[LossFn], Mapping[str, LossFn]]
TaskTypes = Union[Sequence[str], Mapping[str, str]]
Routing = Union[str, Sequence[Sequence[int]], Mapping[str, Sequence[int]]]

METHODS = ("kendall", "simple", "liebel", "imtl_l", "dwa", "rlw", "gls", "fixed", "equal")
TASK_TYPES = ("regression", "classification")
DEFAULT_CLAMP = {
    "kendall": (-10.0, 10.0),
    "simple": (-10.0, 10.0),
    "imtl_l": (-10.0, 10.0),
    "liebel": (0.01, 100.0),
}
_INIT = {"kendall": 0.0, "simple": 0.0, "imtl_l": 0.0, "liebel": 1.0}
_FLOATS = (paddle.float16, paddle.bfloat16, paddle.float32, paddle.float64)
GLS_FLOOR = 1e-12  # keeps log(L) finite for gls when a task's loss reaches 0


def _names_and_losses(losses: Losses) -> tuple[list[str], list[LossFn]]:
    if isinstance(losses, Mapping):
        names, fns = [str(k) for k in losses], list(losses.values())
    elif isinstance(losses, (list, tuple)):
        fns = list(losses)
        names = [f"task{i}" for i in range(len(fns))]
    else:
        raise TypeError(
            f"losses must be a list of losses or a dict {{task name: loss}}, got "
            f"{type(losses).__name__}. Fix: AutoWeight([loss_a, loss_b]) or "
            "AutoWeight({'depth': mse, 'seg': ce})."
        )
    if not fns:
        raise ValueError(
            "losses is empty: AutoWeight needs at least one loss. Fix: pass e.g. "
            "AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()])."
        )
    for name, fn in zip(names, fns):
        if not callable(fn):
            raise TypeError(
                f"loss '{name}' is a {type(fn).__name__}, not callable. Fix: pass a "
                "paddle.nn.Layer such as paddle.nn.CrossEntropyLoss() or a function."
            )
    return names, fns


def _per_task(value: object, names: list[str], what: str, example: str) -> list:
    """Turn a list or a {task: value} dict into a list in task order."""
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        extra = [k for k in value if k not in names]
        if missing or extra:
            raise ValueError(
                f"{what} must name every task exactly once: missing {missing}, unknown "
                f"{extra}; the tasks are {names}. Fix: {example}."
            )
        return [value[n] for n in names]
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise ValueError(
                f"{what} has {len(value)} entries but there are {len(names)} tasks "
                f"{names}. Fix: {example}."
            )
        return list(value)
    raise TypeError(f"{what} must be a list or a dict, got {type(value).__name__}. Fix: {example}.")


class AutoWeight(paddle.nn.Layer):
    """Weights several losses into one and learns the weights during ``model.fit``.

    Args:
        losses: a list of losses, or a dict ``{task name: loss}``. A loss is any
            Layer or callable returning a scalar (``TopKLoss`` included). Unnamed
            tasks are called ``task0``, ``task1``...
        method: ``"kendall"``, ``"simple"``, ``"liebel"``, ``"imtl_l"``, ``"dwa"``,
            ``"rlw"``, ``"gls"``, ``"fixed"`` or ``"equal"`` (formulas in the module
            docstring).
        task_types: ``"regression"`` or ``"classification"`` per task (list, or dict
            by task name). Required for ``"kendall"``, where it sets the ½ factor.
        routing: which of the tensors hapi passes (``*outputs, *labels``) go to each
            loss. ``"paired"``: loss i gets ``(outputs[i], labels[i])``.
            ``"shared"``: every loss gets the same ``(output, label)`` (CE + Dice on one
            segmentation output). Or explicit: per task, the indices into
            ``(*outputs, *labels)``, e.g. ``{"depth": (0, 2), "seg": (1, 3)}``.
        weights: the fixed weights, for ``method="fixed"`` only.
        clamp: ``(min, max)`` for s (kendall, simple) or c (liebel) in the forward.
        init: initial s (default 0, i.e. σ = 1) or c (default 1).
        temperature: dwa's temperature T (default 2, as in the paper).
        seed: seeds rlw's draws (its own numpy generator); None draws fresh ones.
            Under ``paddle.distributed.launch`` every rank draws the same weights
            either way (with None, rank 0's seed is broadcast at the first
            training forward).

    The forward returns a 0-d float32 tensor, computed in float32 whatever the
    inputs' dtype. Train it through ``model.fit(..., callbacks=[AutoWeightCallback()])``.

    Reading: ``sigmas()``/``weights()`` are the values now (after the last update);
    ``used()`` the ones the last training step's forward used (σ before its update):
    what hapi's progress line, ``TqdmProgressBar`` and the exporters show per step.

    Under ``paddle.distributed.launch``: dwa averages the epoch's losses over every
    rank's batches, and rlw draws the same weights on every rank (also with
    ``seed=None``), so every rank trains with the same weights.

    Example::

        loss = AutoWeight({"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()},
                          method="kendall", task_types=["regression", "regression"])
        model.prepare(paddle.optimizer.Adam(1e-3, parameters=model.parameters()), loss)
        model.fit(data, epochs=10, callbacks=[AutoWeightCallback()])
        loss.sigmas()   # {'y1': 2.98, 'y2': 0.51}
    """

    def __init__(
        self,
        losses: Losses,
        method: str = "kendall",
        task_types: TaskTypes | None = None,
        routing: Routing = "paired",
        weights: Sequence[float] | Mapping[str, float] | None = None,
        clamp: tuple[float, float] | None = None,
        init: float | None = None,
        temperature: float = 2.0,
        seed: int | None = None,
    ) -> None:
        _hapi.require_dynamic_mode()
        super().__init__()
        names, fns = _names_and_losses(losses)
        if method not in METHODS:
            raise ValueError(
                f"Unknown method {method!r}. Fix: use one of {', '.join(METHODS)}."
            )
        self.method = method
        self.task_names: list[str] = names
        self.losses = paddle.nn.LayerList([f for f in fns if isinstance(f, paddle.nn.Layer)])
        self._fns = fns
        self._types: list[str | None] = [None] * len(names)
        self._factors = self._task_factors(task_types)
        self._routes = self._parse_routing(routing)
        self._fixed = self._fixed_weights(weights)
        # Last raw losses and this epoch's running sums. A dict, because a Tensor
        # attribute of a Layer silently becomes a buffer (copied on every assignment).
        self._seen: dict[str, paddle.Tensor] = {}
        n = len(names)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be > 0, got {temperature!r}. Fix: DWA's paper uses 2.0.")
        self.temperature = float(temperature)
        # dwa: the last two epochs' average losses and the weights they give. Buffers,
        # so they are saved and restored with the loss's state.
        self.register_buffer("dwa_history", paddle.zeros([2, n], dtype="float32"))
        self.register_buffer("dwa_weights", paddle.ones([n], dtype="float32"))
        self.register_buffer("epochs_seen", paddle.zeros([], dtype="int64"))
        # rlw: its own generator, so drawing weights never shifts paddle's random stream.
        self._rng = np.random.default_rng(seed)
        self._rlw_last = np.full(n, 1.0 / n)  # the last training forward's draw
        self._rlw_next: np.ndarray | None = None  # drawn early by snapshot(), used next
        self._seed_shared = seed is not None  # an explicit seed is the same on every rank

        self.clamp: tuple[float, float] | None = None
        self.s: paddle.Tensor | None = None
        if method in _INIT:
            lo, hi = clamp if clamp is not None else DEFAULT_CLAMP[method]
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(
                    f"clamp must be finite with min < max, got ({lo}, {hi}). Fix: e.g. "
                    f"clamp={DEFAULT_CLAMP[method]}."
                )
            if method == "liebel" and lo <= 0:
                raise ValueError(
                    f"For liebel, clamp bounds c, which must stay > 0, got min {lo}. "
                    "Fix: e.g. clamp=(0.01, 100.0)."
                )
            self.clamp = (float(lo), float(hi))
            start = _INIT[method] if init is None else float(init)
            self.s = self.create_parameter(
                shape=[len(names)],
                dtype="float32",
                attr=paddle.ParamAttr(regularizer=paddle.regularizer.L2Decay(0.0)),
                default_initializer=paddle.nn.initializer.Constant(start),
            )
        elif clamp is not None or init is not None:
            raise ValueError(
                f"method {method!r} learns nothing, so clamp and init do not apply. "
                "Fix: drop them, or use method='kendall', 'liebel', 'simple' or 'imtl_l'."
            )

    # ------------------------------------------------------------ configuration

    def _task_factors(self, task_types: TaskTypes | None) -> list[float]:
        names = self.task_names
        example = f"task_types={['regression'] * len(names)}"
        if task_types is None:
            if self.method == "kendall":
                raise ValueError(
                    "method='kendall' needs task_types, since a regression task is weighted "
                    "½·e^(−s) and a classification task e^(−s). Fix: pass "
                    f"{example} (one of 'regression', 'classification' per task)."
                )
            return [1.0] * len(names)
        if isinstance(task_types, str):
            raise TypeError(f"task_types must be a list or a dict, not a string. Fix: {example}.")
        types = _per_task(task_types, names, "task_types", example)
        for name, t in zip(names, types):
            if t not in TASK_TYPES:
                raise ValueError(
                    f"Unknown task type {t!r} for task '{name}'. Fix: use 'regression' "
                    "or 'classification'."
                )
        self._types = list(types)
        return [0.5 if t == "regression" else 1.0 for t in types]

    def _parse_routing(self, routing: Routing) -> list[tuple[int, ...]] | None:
        n = len(self.task_names)
        if routing == "paired":
            return None
        if routing == "shared":
            return [(0, 1)] * n
        if isinstance(routing, str):
            raise ValueError(
                f"Unknown routing {routing!r}. Fix: use 'paired', 'shared', or per task "
                "the indices into (*outputs, *labels), e.g. {'a': (0, 2), 'b': (1, 3)}."
            )
        routes = _per_task(routing, self.task_names, "routing", "{'a': (0, 2), 'b': (1, 3)}")
        out = []
        for name, r in zip(self.task_names, routes):
            idx = tuple(r) if isinstance(r, (list, tuple)) else (r,)
            if not idx or not all(isinstance(i, int) and i >= 0 for i in idx):
                raise ValueError(
                    f"routing for task '{name}' must be non-negative tensor indices, got "
                    f"{r!r}. Fix: e.g. (0, 2) = outputs[0] and the first label when there "
                    "are two outputs."
                )
            out.append(idx)
        return out

    def _fixed_weights(self, weights: object) -> list[float] | None:
        if self.method != "fixed":
            if weights is not None:
                raise ValueError(
                    f"weights only apply to method='fixed', not {self.method!r}. Fix: drop "
                    "weights, or use method='fixed'."
                )
            return None
        n = len(self.task_names)
        example = f"weights={[round(1.0 / n, 3)] * n}"
        if weights is None:
            raise ValueError(f"method='fixed' needs weights, one per task. Fix: {example}.")
        ws = [float(w) for w in _per_task(weights, self.task_names, "weights", example)]
        bad = [w for w in ws if not (math.isfinite(w) and w >= 0)]
        if bad:
            raise ValueError(f"fixed weights must be finite and >= 0, got {ws}. Fix: {example}.")
        return ws

    # ------------------------------------------------------------ forward

    def _route(self, tensors: tuple[paddle.Tensor, ...]) -> list[tuple[paddle.Tensor, ...]]:
        n, got = len(self.task_names), len(tensors)
        if self._routes is None:
            if got != 2 * n:
                raise ValueError(
                    f"routing='paired' with {n} tasks expects {2 * n} tensors "
                    f"({n} outputs then {n} labels), but hapi passed {got}. Fix: return one "
                    "output per task and give one label per task, or use routing='shared' "
                    "or an explicit routing."
                )
            return [(tensors[i], tensors[n + i]) for i in range(n)]
        need = max(max(r) for r in self._routes) + 1
        if self._routes == [(0, 1)] * n and got != 2:
            raise ValueError(
                f"routing='shared' expects 2 tensors (one output, one label), but hapi "
                f"passed {got}. Fix: use routing='paired' or an explicit routing."
            )
        if got < need:
            raise ValueError(
                f"routing uses tensor index {need - 1}, but hapi passed only {got} tensors "
                "(*outputs, *labels). Fix: the routing indices."
            )
        return [tuple(tensors[i] for i in r) for r in self._routes]

    def _check_inputs(self, name: str, kind: str | None, args: tuple[paddle.Tensor, ...]) -> None:
        """Shape and dtype mistakes that a loss would otherwise broadcast silently."""
        shapes = [a.shape for a in args if isinstance(a, paddle.Tensor)]
        if len({shape[0] for shape in shapes if shape}) > 1:
            raise ValueError(
                f"task '{name}' got tensors with different batch sizes {shapes}. Fix: the "
                "routing (which output goes with which label) or the data loader."
            )
        if kind != "regression" or len(args) != 2 or len(shapes) != 2:
            return
        out = args[0]
        if out.dtype not in _FLOATS:
            raise TypeError(
                f"task '{name}' is a regression task but its output is {out.dtype}. Fix: make "
                "the network return floats (e.g. .astype('float32')), or set the task type to "
                "'classification'."
            )
        if shapes[0] != shapes[1]:
            raise ValueError(
                f"task '{name}' is a regression task, but its output has shape "
                f"{shapes[0]} and its label {shapes[1]}; a loss such as MSELoss "
                "would broadcast them to a wrong result. Fix: reshape the label (or the output) "
                f"to {shapes[0]}."
            )

    def _scalar(self, name: str, value: object) -> paddle.Tensor:
        if not isinstance(value, paddle.Tensor):
            raise TypeError(
                f"loss '{name}' returned {type(value).__name__}, not a paddle.Tensor. "
                "Fix: return a scalar tensor."
            )
        if math.prod(value.shape) != 1:
            raise ValueError(
                f"loss '{name}' returned shape {list(value.shape)}, but AutoWeight needs one "
                "scalar per task. Fix: use reduction='mean', or wrap a reduction='none' loss "
                "in hapi_autoloss.TopKLoss."
            )
        if value.ndim:
            value = value.reshape([])
        return value if value.dtype == paddle.float32 else value.astype("float32")

    def forward(self, *tensors: paddle.Tensor) -> paddle.Tensor:
        _hapi.check_attached(self, needed=self.s is not None or self.method == "dwa")
        raw = []
        for name, kind, fn, args in zip(self.task_names, self._types, self._fns, self._route(tensors)):
            self._check_inputs(name, kind, args)
            raw.append(self._scalar(name, fn(*args)))
        values = paddle.stack(raw)
        last = values.detach()
        self._seen["last"] = last
        if paddle.is_grad_enabled():  # a training forward: what used() reports
            self._seen["train_last"] = last
            self._seen.pop("dwa_used", None)
        if self.method == "dwa" and paddle.is_grad_enabled():  # epoch average, no host sync
            finite = paddle.isfinite(last)  # a skipped non-finite step must not count
            kept = paddle.where(finite, last, paddle.zeros_like(last))
            count = finite.astype("float32")
            if "sum" in self._seen:
                kept, count = kept + self._seen["sum"], count + self._seen["count"]
            self._seen.update(sum=kept, count=count)
        return self.combine(values)

    def combine(self, values: paddle.Tensor) -> paddle.Tensor:
        """The weighted total (0-d float32) from the per-task losses, shape [n]."""
        method = self.method
        if method == "equal":
            return values.sum()
        if method == "gls":
            return paddle.exp(paddle.log(paddle.clip(values, min=GLS_FLOOR)).mean())
        if method in ("fixed", "dwa", "rlw"):
            return (values * self._plain_weights()).sum()
        assert self.s is not None and self.clamp is not None
        # Straight-through clamp: the value is clamped, the gradient always flows, so
        # an s that momentum carried past a bound is pulled back instead of frozen.
        p = self.s + (paddle.clip(self.s, *self.clamp) - self.s).detach()
        if paddle.is_grad_enabled():
            self._seen["p"] = p.detach()  # the exact s this forward used, read by used()
        if method == "liebel":
            c2 = p * p
            return (values / (2.0 * c2) + paddle.log1p(c2)).sum()
        if method == "simple":
            return (paddle.exp(-p) * values + p).sum()
        if method == "imtl_l":
            return (paddle.exp(p) * values - p).sum()
        return (self._const("factors", self._factors) * paddle.exp(-p) * values + 0.5 * p).sum()

    def _const(self, key: str, values: list[float]) -> paddle.Tensor:
        """A constant tensor made once, not a host-to-device copy every step."""
        if key not in self._seen:
            self._seen[key] = paddle.to_tensor(values, dtype="float32")
        return self._seen[key]

    def _plain_weights(self) -> paddle.Tensor:
        if self.method == "dwa":
            return self.dwa_weights
        if self.method == "rlw":
            if paddle.is_grad_enabled():
                self.share_seed()
                drawn = self._rlw_next if self._rlw_next is not None else self._draw()
                self._rlw_next, self._rlw_last = None, drawn
                return paddle.to_tensor(drawn, dtype="float32")
            # evaluation: the expected weight, so eval losses are comparable
            return self._const("rlw_mean", [1.0 / len(self.task_names)] * len(self.task_names))
        assert self._fixed is not None
        return self._const("fixed", self._fixed)

    def _draw(self) -> np.ndarray:
        z = self._rng.standard_normal(len(self.task_names))
        e = np.exp(z - z.max())
        return e / e.sum()

    def share_seed(self) -> None:
        """rlw, ``seed=None``, under ``paddle.distributed.launch``: every rank takes
        rank 0's seed, so every rank draws the same weights.

        A collective (every rank must call it), done once; the first training
        forward calls it. Does nothing for other methods, an explicit seed or a
        single process.
        """
        if self._seed_shared:
            return
        self._seed_shared = True
        rank, nranks = _hapi.world()
        if self.method != "rlw" or nranks <= 1:
            return
        seed = int(self._rng.integers(0, 2**62)) if rank == 0 else 0
        shared = paddle.to_tensor([seed], dtype="int64")
        paddle.distributed.broadcast(shared, src=0)
        self._rng = np.random.default_rng(int(shared.numpy()[0]))
        self._rlw_next = None  # drawn from this rank's own seed: not the shared stream

    def _reduce_epoch(self) -> None:
        """dwa under the launcher: this epoch's sums and counts over every rank's
        batches (one all-reduce; a rank without batches adds zeros)."""
        n = len(self.task_names)
        ran = "sum" in self._seen
        zeros = paddle.zeros([n], dtype="float32")
        packed = paddle.concat([
            self._seen.get("sum", zeros), self._seen.get("count", zeros),
            paddle.to_tensor([1.0 if ran else 0.0], dtype="float32"),
        ])
        paddle.distributed.all_reduce(packed)
        self._seen.pop("sum", None)
        self._seen.pop("count", None)
        if float(packed[2 * n]) > 0:  # some rank trained this epoch
            self._seen.update(sum=packed[:n], count=packed[n:2 * n])

    def end_epoch(self) -> None:
        """Close a training epoch: dwa's weights for the next epoch come from its
        average losses, over every rank's batches under ``paddle.distributed.launch``
        (a collective there: every rank calls it). ``AutoWeightCallback`` calls this
        at every epoch end."""
        if self.method == "dwa" and _hapi.world()[1] > 1:
            self._reduce_epoch()
        if "sum" not in self._seen:
            return  # no training forward this epoch
        self._seen["dwa_used"] = self.dwa_weights.clone()  # used() = this epoch's weights
        average = self._seen.pop("sum") / paddle.clip(self._seen.pop("count"), min=1.0)
        self.dwa_history.set_value(paddle.stack([self.dwa_history[1], average]))
        self.epochs_seen.set_value(self.epochs_seen + 1)
        if self.method == "dwa" and int(self.epochs_seen) >= 2:
            ratio = self.dwa_history[1] / paddle.clip(self.dwa_history[0], min=GLS_FLOOR)
            n = len(self.task_names)
            self.dwa_weights.set_value(n * paddle.nn.functional.softmax(ratio / self.temperature))

    # ------------------------------------------------------------ reading
    #
    # Shown values, one definition: a training step shows the σ and weights its own
    # forward pass used (s before that step's update). used() reads them after the
    # step; snapshot() gives them before it, for AutoWeightCallback's logs.

    def _clamped(self) -> np.ndarray | None:
        """s (or c) clamped, in float64 (one device read)."""
        if self.s is None or self.clamp is None:
            return None
        return np.clip(self.s.numpy().astype(np.float64), *self.clamp)

    def used(self) -> tuple[dict[str, float], dict[str, float]]:
        """``(σ, weights)`` the last training forward used, from one device read.

        s before that step's update, dwa's weights of that epoch, rlw's draw, gls's
        gradient at that batch's losses. Before any training forward, the current
        values. The exporters log these at each step.

        Example::

            model.train_batch([x], [y1, y2])
            loss.used()   # ({'y1': 1.0, 'y2': 1.0}, {'y1': 0.5, 'y2': 0.5}): s before the update
        """
        p = self._seen["p"].numpy().astype(np.float64) if "p" in self._seen else self._clamped()
        weights = self._weights(p, "train_last")
        if "dwa_used" in self._seen:
            weights = self._named(self._seen["dwa_used"].numpy().astype(np.float64))
        return self._sigmas(p), weights

    def snapshot(self) -> tuple[dict[str, float], dict[str, float]]:
        """``(σ, weights)`` the next training forward will use, from one device read.

        ``(sigmas(), weights())``, except: rlw draws the next step's weights now
        (its sequence of draws is the same whether or not anyone looks), and gls
        gives the last training forward's gradient (the next one depends on losses
        not computed yet). ``AutoWeightCallback`` puts these into ``logs`` at each
        batch's begin, so they are the values that batch trains with.
        """
        p = self._clamped()
        weights = self._weights(p, "train_last")
        if self.method == "rlw" and (self._seed_shared or _hapi.world()[1] <= 1):
            if self._rlw_next is None:
                self._rlw_next = self._draw()
            weights = self._named(self._rlw_next)
        return self._sigmas(p), weights

    def sigmas(self) -> dict[str, float]:
        """σ per task now (after the last update): e^(s/2) for kendall and simple,
        c for liebel, e^(−s/2) for imtl_l (so its weight is 1/σ²); {} for methods
        that learn nothing."""
        return self._sigmas(self._clamped())

    def _named(self, values: np.ndarray) -> dict[str, float]:
        return dict(zip(self.task_names, map(float, values)))

    def _sigmas(self, p: np.ndarray | None) -> dict[str, float]:
        if p is None:
            return {}
        if self.method == "liebel":
            sig = p
        elif self.method == "imtl_l":
            sig = np.exp(-p / 2.0)
        else:
            sig = np.exp(p / 2.0)
        return self._named(sig)

    def weights(self) -> dict[str, float]:
        """The factor each task's loss is multiplied by in the total, per task, now
        (after the last update; rlw: its last draw).

        For gls, whose total is not a weighted sum, it is the gradient
        d total / d L_i at the last forward: total / (n·L_i), and 0 for a loss
        below the floor ``GLS_FLOOR`` (where the clip stops the gradient).
        """
        return self._weights(self._clamped(), "last")

    def _gls_gradient(self, values: np.ndarray) -> np.ndarray:
        """d total / d L_i of ``combine`` for gls, in float64, as paddle computes it:
        ``clip(L, min=floor)`` passes the gradient where L >= floor (in float32)."""
        floor = float(np.float32(GLS_FLOOR))
        values = values.astype(np.float64)
        kept = np.maximum(values, floor)
        total = np.exp(np.log(kept).mean())
        return np.where(values >= floor, total / (len(values) * kept), 0.0)

    def _weights(self, p: np.ndarray | None, last: str) -> dict[str, float]:
        n = len(self.task_names)
        if self.method == "liebel" and p is not None:
            w = 1.0 / (2.0 * p * p)
        elif self.method == "simple" and p is not None:
            w = np.exp(-p)
        elif self.method == "imtl_l" and p is not None:
            w = np.exp(p)
        elif self.method == "kendall" and p is not None:
            w = np.asarray(self._factors) * np.exp(-p)
        elif self.method == "fixed":
            w = np.asarray(self._fixed)
        elif self.method == "dwa":
            w = self.dwa_weights.numpy().astype(np.float64)
        elif self.method == "rlw":
            w = self._rlw_last
        elif self.method == "gls" and last in self._seen:
            w = self._gls_gradient(self._seen[last].numpy())
        else:
            w = np.ones(n)
        return self._named(w)

    def last_losses(self) -> dict[str, float]:
        """The raw (unweighted) per-task losses of the last forward; {} before one."""
        if "last" not in self._seen:
            return {}
        return dict(zip(self.task_names, map(float, self._seen["last"].numpy())))

    # ------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict[str, object]:
        """What ``model.save`` keeps besides tensors: the method and tasks (to refuse a
        mismatched checkpoint) and rlw's random stream, with a draw taken early."""
        ahead = None if self._rlw_next is None else [float(w) for w in self._rlw_next]
        return {"method": self.method, "tasks": list(self.task_names), "rng": self._rng.bit_generator.state,
                "rlw_last": [float(w) for w in self._rlw_last], "rlw_next": ahead}

    def check_checkpoint_state(self, state: dict, source: str) -> None:
        """Raise, changing nothing, if ``state`` was saved by another method or other tasks."""
        method, tasks = state.get("method", self.method), list(state.get("tasks", self.task_names))
        if method != self.method or tasks != self.task_names:
            raise ValueError(
                f"{source} was written by AutoWeight(method={method!r}, tasks={tasks}), but this "
                f"loss is AutoWeight(method={self.method!r}, tasks={self.task_names}); loading it "
                "would read one task's (or method's) weights as another's. Fix: build the same loss "
                "(that method, those task names in that order) as the run that saved it."
            )

    def reset_epoch(self) -> None:
        """Forget the running sums of an epoch that did not end (a fit that raised), so
        the next epoch's averages (dwa) hold its own batches only."""
        self._seen.pop("sum", None)
        self._seen.pop("count", None)

    def set_checkpoint_state(self, state: dict) -> None:
        self.reset_epoch()
        if "rng" in state:
            self._rng.bit_generator.state = state["rng"]
            self._seed_shared = True  # the saved stream is already the one every rank shares
        if "rlw_last" in state:
            self._rlw_last = np.asarray(state["rlw_last"], dtype=np.float64)
        ahead = state.get("rlw_next")
        self._rlw_next = None if ahead is None else np.asarray(ahead, dtype=np.float64)

    def extra_repr(self) -> str:
        return f"method={self.method}, tasks={self.task_names}"
