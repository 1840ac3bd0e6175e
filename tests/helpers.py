"""Small real models and data shared by the tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import paddle

from hapi_autoloss import AutoWeight

X_SPEC = [paddle.static.InputSpec([None, 3], "float32", "x")]
Y_SPECS = [
    paddle.static.InputSpec([None, 1], "float32", "y1"),
    paddle.static.InputSpec([None, 1], "float32", "y2"),
]


OPTIMIZERS = {"adam": paddle.optimizer.Adam, "adamw": paddle.optimizer.AdamW, "sgd": paddle.optimizer.SGD,
              "lamb": paddle.optimizer.Lamb}


class TwoTaskData(paddle.io.Dataset):
    """x in R^3; y1 = x·a + 2·noise, y2 = x·b + 0.3·noise (fixed seed)."""

    def __init__(self, n: int = 96, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((n, 3)).astype("float32")
        self.y1 = (self.x @ np.array([[1.0], [-2.0], [0.5]]) + 2.0 * rng.standard_normal((n, 1))).astype("float32")
        self.y2 = (self.x @ np.array([[0.3], [0.1], [1.0]]) + 0.3 * rng.standard_normal((n, 1))).astype("float32")

    def __getitem__(self, i: int):
        return self.x[i], self.y1[i], self.y2[i]

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int):
        for i in range(0, len(self), batch_size):
            sl = slice(i, i + batch_size)
            yield [paddle.to_tensor(a[sl]) for a in (self.x, self.y1, self.y2)]


class TwoTaskNet(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = paddle.nn.Linear(3, 8)
        self.h1 = paddle.nn.Linear(8, 1)
        self.h2 = paddle.nn.Linear(8, 1)

    def forward(self, x):
        z = paddle.tanh(self.trunk(x))
        return [self.h1(z), self.h2(z)]


class NaiveUncertaintyLoss(paddle.nn.Layer):
    """What users write by hand (seed 000): a loss Layer with a learned log σ²."""

    def __init__(self) -> None:
        super().__init__()
        self.s = self.create_parameter([2], default_initializer=paddle.nn.initializer.Constant(0.0))

    def forward(self, o1, o2, y1, y2):
        mse = paddle.stack([((o1 - y1) ** 2).mean(), ((o2 - y2) ** 2).mean()])
        return (0.5 * paddle.exp(-self.s) * mse + 0.5 * self.s).sum()


def kendall_loss() -> AutoWeight:
    return AutoWeight(
        {"y1": paddle.nn.MSELoss(), "y2": paddle.nn.MSELoss()},
        method="kendall",
        task_types=["regression", "regression"],
    )


def build_model(loss: paddle.nn.Layer, seed: int = 0, opt: str = "adam", lr: float = 0.05,
                extra_params: Sequence = (), **opt_kwargs) -> paddle.Model:
    paddle.seed(seed)
    net = TwoTaskNet()
    model = paddle.Model(net, inputs=X_SPEC, labels=Y_SPECS)
    params: list = list(model.parameters()) + list(extra_params)
    cls = OPTIMIZERS[opt]
    model.prepare(cls(learning_rate=lr, parameters=params, **opt_kwargs), loss)
    return model


def reference_sigma(steps_data: TwoTaskData, epochs: int, batch_size: int, seed: int = 0,
                    lr: float = 0.05, opt: str = "adam", accumulate: int = 1, decay_sigma: bool = False,
                    **opt_kwargs):
    """The right answer: a hand-written Paddle loop with σ in its own no-decay group."""
    paddle.seed(seed)
    net = TwoTaskNet()
    loss = kendall_loss()
    cls = OPTIMIZERS[opt]
    groups = [{"params": net.parameters()}, {"params": loss.parameters()}]
    if not decay_sigma:
        groups[1]["weight_decay"] = 0.0
        if opt == "lamb":
            groups[1]["lamb_weight_decay"] = 0.0
    optimizer = cls(learning_rate=lr, parameters=groups, **opt_kwargs)
    n_batches = -(-len(steps_data) // batch_size)
    for _ in range(epochs):
        for step, (x, y1, y2) in enumerate(steps_data.batches(batch_size)):
            o1, o2 = net(x)
            loss(o1, o2, y1, y2).backward()
            if (step + 1) % accumulate == 0 or step + 1 == n_batches:
                optimizer.step()
                optimizer.clear_grad()
    return loss.s.numpy().copy(), net
