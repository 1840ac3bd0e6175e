"""A PaddleSeg YAML config naming our losses, through PaddleSeg's own Config, SegBuilder, Dataset and train."""

import cv2
import numpy as np
import paddle
import pytest
from paddleseg.core import train
from paddleseg.cvlibs import Config, SegBuilder, manager
from seg_helpers import TinyNet, shapes

import hapi_autoloss.paddleseg as hp


@manager.MODELS.add_component
class YamlTinyNet(TinyNet):
    def __init__(self, num_classes: int = 3, in_channels: int = 3) -> None:
        super().__init__(num_classes)


CONFIG = """
batch_size: 4
iters: 6
train_dataset:
  type: Dataset
  dataset_root: {root}
  train_path: {root}/train.txt
  num_classes: 3
  ignore_index: 255
  mode: train
  transforms: [{{type: Normalize}}]
model: {{type: YamlTinyNet, num_classes: 3}}
optimizer: {{type: AdamW, weight_decay: 0.5}}
lr_scheduler: {{type: PolynomialDecay, learning_rate: 0.05, end_lr: 0.0}}
loss:
  types:
    - type: AutoWeight
      method: liebel
      losses: [{{type: {ce}}}, {{type: SafeDiceLoss}}]
  coef: [1]
"""


def write(tmp_path, ce="SafeCrossEntropyLoss"):
    x, y = shapes(0, 8)
    lines = []
    for i in range(len(x)):
        img = np.clip(x[i].transpose(1, 2, 0) * 60 + 128, 0, 255).astype("uint8")
        cv2.imwrite(str(tmp_path / f"img{i}.png"), img)
        cv2.imwrite(str(tmp_path / f"lab{i}.png"), y[i].astype("uint8"))
        lines.append(f"img{i}.png lab{i}.png")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    path = tmp_path / "config.yml"
    path.write_text(CONFIG.format(root=tmp_path, ce=ce))
    return str(path)


def test_yaml_config_trains_autoweight(tmp_path):
    cfg = Config(write(tmp_path))
    builder = SegBuilder(cfg)
    model, optimizer, losses = builder.model, builder.optimizer, builder.loss
    aw = losses["types"][0]
    assert isinstance(aw, hp.AutoWeight) and aw.method == "liebel" and aw.task_names == ["crossentropy", "dice"]
    assert aw.ignore_index == 255  # added by PaddleSeg's config checker from the dataset
    hp.attach(model, losses, optimizer)
    train(model, builder.train_dataset, optimizer=optimizer, losses=losses, iters=cfg.iters,
          batch_size=cfg.batch_size, save_dir=str(tmp_path / "out"), log_iters=3, save_interval=3)
    s = aw.s.numpy()
    assert np.abs(s - 1.0).max() > 0.01
    saved = paddle.load(str(tmp_path / "out" / "iter_6" / "model.pdparams"))
    np.testing.assert_array_equal(saved["hapi_autoloss_0.weighting.s"].numpy(), s)


def test_yaml_with_paddleseg_ce_inside_autoweight_is_refused(tmp_path):
    builder = SegBuilder(Config(write(tmp_path, ce="CrossEntropyLoss")))
    with pytest.raises(RuntimeError, match="SafeCrossEntropyLoss"):
        _ = builder.loss
