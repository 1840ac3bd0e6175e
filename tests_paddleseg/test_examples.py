"""The two PaddleSeg examples run, with small settings."""

import importlib.util
import os

import numpy as np
import paddle
from seg_helpers import ROOT


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paddleseg_train_example_and_its_resume(tmp_path):
    example = load("paddleseg_train")
    with paddle.utils.unique_name.guard():  # names as in a fresh process: resume matches the optimizer's by name
        out = example.main(["--iters", "4", "--batch-size", "2", "--save-dir", str(tmp_path)])
    assert 0.0 <= out["miou"] <= 1.0
    assert sorted(os.listdir(tmp_path)) == ["iter_2", "iter_4"]
    with paddle.utils.unique_name.guard():
        again = example.main(["--iters", "4", "--batch-size", "2", "--save-dir", str(tmp_path / "r"),
                              "--resume", str(tmp_path / "iter_2")])
    assert set(again) == set(out)


def test_paddleseg_hapi_example_every_callback(tmp_path):
    from visualdl import LogReader

    out = load("paddleseg_hapi").main(["--epochs", "2", "--n", "8", "--out", str(tmp_path), "--fresh"])
    assert out["ratio"] == 0.3  # TopKScheduler reached its end
    assert abs(out["ce"] - 0.5) > 1e-4 or abs(out["dice"] - 0.5) > 1e-4  # liebel's c moved from 1
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))
    assert os.listdir(tmp_path / "backup")
    runs = LogReader(logdir=str(tmp_path / "vdl")).logs(update=True)
    reader = LogReader(file_path=os.path.join(str(tmp_path / "vdl"), runs[str(tmp_path / "vdl")]))
    tags = reader.get_tags()["scalar"]
    weights = [t for t in tags if "weight" in t]
    assert weights, tags
    values = [v.value for v in reader.get_data("scalar", weights[0])]
    assert len(values) >= 2 and np.all(np.isfinite(values))
