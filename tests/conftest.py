import os
import sys

import paddle
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "examples"))


@pytest.fixture(autouse=True)
def _cpu_dynamic():
    paddle.set_device("cpu")
    paddle.disable_static()
    yield
    paddle.disable_static()
