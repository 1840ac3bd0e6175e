"""The model, optimizer and float64 references the gradient-level tests in PaddleSeg's train share."""

import numpy as np
import paddle
from seg_helpers import TinyNet

import hapi_autoloss.paddleseg as hp

LR = 10.0  # one SGD step: a large one, so that the float32 rounding of the parameters is far below lr·g
NAMES = ["c1.weight", "c1.bias", "c2.weight", "c2.bias"]


def conflicting(data, steps=50):
    """TinyNet after ``steps`` SGD steps on Dice alone: there CE's and Dice's gradients conflict
    (cosine −0.02: pcgrad projects) and MGDA's min-norm point is inside the segment."""
    paddle.seed(0)
    model = TinyNet()
    opt = paddle.optimizer.SGD(0.5, parameters=model.parameters())
    x, y = paddle.to_tensor(data.x), paddle.to_tensor(data.y)
    for _ in range(steps):
        hp.SafeDiceLoss()(model(x)[0], y).backward()
        opt.step()
        opt.clear_grad()
    return model


def build(method, opt="sgd", iters=1, model=None, **options):
    paddle.seed(0)
    model = model or TinyNet()
    aw = hp.AutoWeight([{"type": "SafeCrossEntropyLoss"}, {"type": "SafeDiceLoss"}], method=method, **options)
    losses = {"types": [aw], "coef": [1]}
    if opt == "sgd":
        optimizer = paddle.optimizer.SGD(LR, parameters=model.parameters())
    else:
        sched = paddle.optimizer.lr.PolynomialDecay(0.05, decay_steps=iters, end_lr=0.0)
        optimizer = paddle.optimizer.AdamW(sched, parameters=model.parameters(), weight_decay=0.1)
    return model, aw, losses, optimizer


def per_task_rows(model, data):
    """Each task's gradient of the network's parameters [2, n] in float64, on a copy of the model
    (the whole dataset is the one batch: its 4 images in any order give the same means)."""
    copy = TinyNet()
    copy.set_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("hapi_autoloss")})
    logits = copy(paddle.to_tensor(data.x))[0]
    y = paddle.to_tensor(data.y)
    params = [dict(copy.named_parameters())[n] for n in NAMES]
    rows = []
    for loss in (hp.SafeCrossEntropyLoss()(logits, y), hp.SafeDiceLoss()(logits, y)):
        rows.append(np.concatenate([g.numpy().astype(np.float64).ravel()
                                    for g in paddle.grad(loss, params, retain_graph=True)]))
    return np.stack(rows)


def pcgrad_rule(g, seed):
    """PCGrad (Yu et al. 2020) with the vectors themselves: each g_i projected off every g_j it
    conflicts with, in a random order per task; the sum."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(g)):
        pc = g[i].copy()
        for j in rng.permutation(len(g)):
            if pc @ g[j] < 0:
                pc = pc - (pc @ g[j]) / (g[j] @ g[j]) * g[j]
        out.append(pc)
    return np.sum(out, axis=0)


def mgda_rule(g):
    """The min-norm point of the segment [g_1, g_2] (MGDA's two-task closed form)."""
    w = np.clip((g[1] @ g[1] - g[0] @ g[1]) / ((g[0] - g[1]) @ (g[0] - g[1])), 0.0, 1.0)
    return w * g[0] + (1 - w) * g[1], np.array([w, 1 - w])


def flat(model):
    params = dict(model.named_parameters())
    return np.concatenate([params[n].numpy().astype(np.float64).ravel() for n in NAMES])
