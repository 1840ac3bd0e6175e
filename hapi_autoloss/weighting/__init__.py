"""Loss weighting: ``AutoWeight`` and one class per method.

A method is one file in this package holding one :class:`Weighting` subclass with a
``name``; every module here is imported below, which registers it, so adding a
method means adding a file. Methods (the table with formulas and papers is in the
README and in each class's docstring):

==========  ==============================================  ===============================
name        total                                           paper
==========  ==============================================  ===============================
kendall     Σ f·e^(−s)·L + ½·s, f = ½ regr., 1 classif.     Kendall, Gal & Cipolla, CVPR 2018
simple      Σ e^(−s)·L + s                                  seed 000's code
liebel      Σ L/(2c²) + ln(1 + c²)                          Liebel & Körner, 2018
imtl_l      Σ e^s·L − s                                     Liu et al., ICLR 2021
dwa         Σ n·softmax(r/T)·L, r = epoch averages' ratio   Liu, Johns & Davison, CVPR 2019
rlw         Σ softmax(z)·L, z ~ N(0, 1) each step           Lin et al., TMLR 2022
gls         (Π L)^(1/n)                                     Chennupati et al., CVPRW 2019
famo        Σ z·log L / c, z = softmax(w), w by Adam        Liu et al., NeurIPS 2023
stch        n·μ·logsumexp(log(L/nadir)/μ) after warm-up     Lin et al., ICML 2024
uw_so       Σ softmax((1/L)/T)·L                            Kirchdorfer et al., 2024
fixed       Σ w·L, given w                                  --
equal       Σ L                                             --
==========  ==============================================  ===============================
"""

from __future__ import annotations

import importlib
import pkgutil

from ._make import make_method
from .autoweight import AutoWeight
from .base import METHODS, Weighting

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name not in ("autoweight", "base"):
        importlib.import_module(f"{__name__}.{_module.name}")

from ._tasks import TASK_TYPES  # noqa: E402

__all__ = ["METHODS", "TASK_TYPES", "AutoWeight", "Weighting", "make_method"]
