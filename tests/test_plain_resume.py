"""README "Your own training loop" resume recipe: net, loss_fn and opt state dicts saved with
paddle.save and loaded into fresh objects continue bit for bit as an uninterrupted run, for
the methods whose state once lived only in checkpoint_state (db_mtl, nash_mtl; stch's epoch
count), and for rlw and pcgrad, whose NumPy stream's state is a buffer too (once an extra save line)."""

import numpy as np
import paddle
import pytest
from helpers import TrunkNet

from hapi_autoloss import AutoWeight, param_groups

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 4)).astype("float32")
Y1 = (X @ RNG.normal(size=(4, 1))).astype("float32")
Y2 = (3 * np.sin(3 * X[:, :1])).astype("float32")


def build(method, opts):
    paddle.seed(0)
    net = TrunkNet()
    loss_fn = AutoWeight([paddle.nn.MSELoss(), paddle.nn.MSELoss()], method=method, **opts)
    return net, loss_fn, paddle.optimizer.Adam(0.01, parameters=param_groups(net, loss_fn))


def train(net, loss_fn, opt, epochs):
    for _ in range(epochs):
        for i in range(0, 32, 8):
            t = [paddle.to_tensor(a[i:i + 8]) for a in (X, Y1, Y2)]
            loss = loss_fn(*net(t[0]), t[1], t[2])
            loss.backward()
            opt.step()
            opt.clear_grad()
        loss_fn.end_epoch()


@pytest.mark.parametrize("method, opts", [
    ("db_mtl", {}), ("db_mtl", {"beta_sigma": 0.5}), ("nash_mtl", {"update_weights_every": 3}),
    ("stch", {"warmup_epochs": 1}), ("rlw", {"seed": 0}), ("rlw", {"seed": None}),
])
def test_plain_loop_resume_is_bit_identical(method, opts, tmp_path):
    """The reference is the saved run itself, trained on: with seed=None its stream is its own."""
    with paddle.utils.unique_name.guard():
        straight = build(method, opts)
        train(*straight, 2)
        net, loss_fn, opt = straight
        paddle.save(net.state_dict(), str(tmp_path / "plain.pdparams"))
        paddle.save(loss_fn.state_dict(), str(tmp_path / "plain.autoloss.pdparams"))
        paddle.save(opt.state_dict(), str(tmp_path / "plain.pdopt"))
        train(*straight, 2)
    with paddle.utils.unique_name.guard():
        net, loss_fn, opt = build(method, opts)
        net.set_state_dict(paddle.load(str(tmp_path / "plain.pdparams")))
        loss_fn.set_state_dict(paddle.load(str(tmp_path / "plain.autoloss.pdparams")))
        opt.set_state_dict(paddle.load(str(tmp_path / "plain.pdopt")))
        train(net, loss_fn, opt, 2)
    for (name, p), q in zip(straight[0].named_parameters(), net.parameters()):
        np.testing.assert_array_equal(q.numpy(), p.numpy(), err_msg=name)
    for key, value in straight[1].state_dict().items():
        np.testing.assert_array_equal(loss_fn.state_dict()[key].numpy(), value.numpy(), err_msg=key)


def test_hapi_checkpoint_from_before_the_buffers_still_loads(tmp_path):
    """A .autoloss file written when db_mtl kept ĝ and t in checkpoint_state (no buffers)."""
    import hapi_autoloss
    from hapi_autoloss.callbacks import AutoWeightCallback

    data = paddle.io.TensorDataset([paddle.to_tensor(a) for a in (X, Y1, Y2)])
    models = []
    for _ in range(2):
        with paddle.utils.unique_name.guard():
            net, loss_fn, _ = build("db_mtl", {"beta_sigma": 0.5})
            model = paddle.Model(net)
            model.prepare(paddle.optimizer.Adam(0.01, parameters=net.parameters()), loss_fn)
            models.append(model)
    models[0].fit(data, epochs=1, batch_size=8, shuffle=False, verbose=0, callbacks=[AutoWeightCallback()])
    path = str(tmp_path / "ck")
    models[0].save(path)
    state = paddle.load(path + ".autoloss")
    saved = {k: state["loss"].pop(f"weighting.{k}") for k in ("db_grads", "db_step")}
    state["layers"]["weighting"].update(step=int(saved["db_step"]), buffer=saved["db_grads"])
    paddle.save(state, path + ".autoloss")
    models[1].load(path)
    hapi_autoloss.load_state(models[1], path)
    for key, value in models[0]._loss.state_dict().items():
        np.testing.assert_array_equal(models[1]._loss.state_dict()[key].numpy(), value.numpy(), err_msg=key)
