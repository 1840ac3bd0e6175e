"""LibMTL's method and option names: refused with ours in the fix, declared in each method's file,
and the README's "Coming from LibMTL" table agrees with those declarations."""

import inspect
import math
import os
import re

import numpy as np
import paddle
import pytest
from helpers import ROOT, identity

from hapi_autoloss import AutoWeight
from hapi_autoloss.weighting import METHODS

BUILTIN = {k: cls for k, cls in METHODS.items() if cls.__module__.startswith("hapi_autoloss.weighting.")}
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def message(method="kendall", **options) -> str:
    with pytest.raises(ValueError) as err:
        AutoWeight([identity] * 2, method=method, **options)
    return str(err.value)


def options_of(cls) -> set:
    return {p.name for p in list(inspect.signature(cls.__init__).parameters.values())[1:]}


@pytest.mark.parametrize("method,options,expected", [
    ("cagrad", {"calpha": 0.4, "rescale": 1}, "calpha is LibMTL's name for cagrad's c. Fix: c=0.4."),
    ("mgda", {"mgda_gn": "l2"}, "mgda_gn is LibMTL's name for mgda's normalize. Fix: normalize='l2'."),
    ("dwa", {"T": 2.0}, "T is LibMTL's name for dwa's temperature. Fix: temperature=2.0."),
    ("stch", {"STCH_mu": 0.5}, "STCH_mu is LibMTL's name for stch's mu. Fix: mu=0.5."),
    ("db_mtl", {"DB_beta_sigma": 0.5}, "DB_beta_sigma is LibMTL's name for db_mtl's beta_sigma. Fix: beta_sigma=0.5."),
    ("famo", {"FAMO_w_gamma": 0.01}, "FAMO_w_gamma is LibMTL's name for famo's gamma. Fix: gamma=0.01."),
    ("nash_mtl", {"update_weights_every": 2, "optim_niter": 20},
     "optim_niter is an option of LibMTL's Nash_MTL that nash_mtl does not have: nash_mtl has no cvxpy CCP loop "
     "to cap: it solves α by Newton's method to convergence (Newton decrement < 1e-12). Fix: drop optim_niter=20."),
])
def test_a_libmtl_option_name_is_refused_with_ours_keeping_the_value(method, options, expected):
    assert message(method, **options) == expected


def test_following_the_fix_sets_the_value_given():
    assert AutoWeight([identity] * 2, method="cagrad", c=0.4).weighting.c == 0.4


@pytest.mark.parametrize("method,expected", [
    ("uw", "Unknown method 'uw': it is LibMTL's name for kendall (LibMTL's UW weights every task ½·e^(−s) and "
           "starts s at −0.5: kendall with every task 'regression' and init=-0.5). Fix: method='kendall'."),
    ("EW", "Unknown method 'EW': it is LibMTL's name for equal. Fix: method='equal'."),
    ("Nash_MTL", "Unknown method 'Nash_MTL': it is LibMTL's name for nash_mtl. Fix: method='nash_mtl'."),
    ("IMTL", "Unknown method 'IMTL': it is LibMTL's name for imtl (LibMTL's IMTL is IMTL-G on IMTL-L's scaled "
             "losses, as imtl; imtl_l is the loss half alone). Fix: method='imtl'."),
    ("Kendall", "Unknown method 'Kendall': names are case-sensitive. Fix: method='kendall'."),
])
def test_a_libmtl_method_name_is_refused_with_ours(method, expected):
    assert message(method) == expected


def test_a_keyword_of_no_method_is_no_argument_of_autoweight():
    assert message(weighting="pcgrad") == (
        "weighting is not an argument of AutoWeight, nor an option of any method (method='kendall' takes "
        "clamp, init). Fix: method='pcgrad'.")
    assert message(weighting="PCGrad").endswith("Fix: method='pcgrad'.")
    assert message(arch="HPS").endswith(
        "Fix: drop arch=...; AutoWeight takes losses, method, task_types, routing, shared, rep_grad and the "
        "method's options (clamp, init).")
    assert message("imtl", calpha=0.4) == (
        "calpha is LibMTL's name for cagrad's c, and method='imtl' takes no options. Fix: drop calpha=..., or "
        "method='cagrad' with c=0.4.")
    assert message("equal", temperature=2.0).endswith("Fix: drop temperature=..., or use a method that takes it "
                                                     "(dwa, uw_so).")


def test_every_declared_libmtl_name_maps_to_what_the_method_takes():
    names = [cls.libmtl_name.lower() for cls in BUILTIN.values() if cls.libmtl_name]
    assert len(names) == len(set(names)) == 15
    for name, cls in BUILTIN.items():
        assert not (cls.libmtl_name.lower() in BUILTIN and cls.libmtl_name.lower() != name), name
        assert set(cls.libmtl_options.values()) <= options_of(cls), name
        assert not set(cls.libmtl_options) & options_of(cls), name
        assert not set(cls.libmtl_lacks) & options_of(cls), name
        assert not set(cls.libmtl_options) & set(cls.libmtl_lacks), name
    assert BUILTIN["cagrad"].libmtl_options == {"calpha": "c"}


def test_the_readme_libmtl_table_is_the_classes_declarations():
    section = README.split("### Coming from LibMTL", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if re.match(r"\| `\w+` \| `\w+` \|", line)]
    table = {}
    for row in rows:
        lib, ours, opts = [cell.strip() for cell in row.strip("|").split("|")][:3]
        pairs = {} if opts == "—" else dict(
            re.fullmatch(r"`(\w+)` → (`(\w+)`|none)", p.strip()).group(1, 3) for p in opts.split(","))
        table[lib.strip("`")] = (ours.strip("`"), pairs)
    declared = {cls.libmtl_name: (name, {**cls.libmtl_options, **dict.fromkeys(cls.libmtl_lacks)})
                for name, cls in BUILTIN.items() if cls.libmtl_name}
    assert table == declared


def test_kendall_with_init_minus_half_starts_as_libmtl_uw():
    loss = AutoWeight([identity] * 2, method="kendall", task_types=["regression"] * 2, init=-0.5)
    expected = 1.0 / (2.0 * math.exp(-0.5))  # LibMTL/weighting/UW.py: losses/(2·e^s) + s/2, s starts at −0.5
    np.testing.assert_allclose(list(loss.weights().values()), [expected] * 2, rtol=1e-6)
    values = np.array([2.0, 0.5])
    outputs = [paddle.to_tensor(v, "float32") for v in values]
    total = float(loss(*outputs, *outputs))  # identity: each task's loss is its output
    np.testing.assert_allclose(total, float(np.sum(values / (2 * math.exp(-0.5)) - 0.25)), rtol=1e-6)


def test_a_users_subclass_or_namesake_gets_a_fix_that_applies_to_it():
    """A subclass inherits the LibMTL names of its parent, not always its options: the Fix said
    "beta=0.8" to a method that takes none. And a user's own method "ew" lost to LibMTL's EW."""
    from hapi_autoloss.weighting.db_mtl import DBMTL
    from hapi_autoloss.weighting.equal import Equal

    class MyDB(DBMTL):
        name = "mydb_names_test"

        def __init__(self, gamma: float = 0.5) -> None:
            super().__init__()
            self.gamma = gamma

    class Ew(Equal):
        name = "ew"

    try:
        said = message("mydb_names_test", DB_beta=0.8)
        assert "Fix: beta=" not in said and "method='mydb_names_test' takes gamma" in said, said
        assert message("mydb_names_test", optim_niter=3).endswith("Fix: drop optim_niter=...; AutoWeight takes "
                                                                  "losses, method, task_types, routing, shared, "
                                                                  "rep_grad and the method's options (gamma).")
        assert message("EW") == "Unknown method 'EW': names are case-sensitive. Fix: method='ew'."
    finally:
        del METHODS["mydb_names_test"], METHODS["ew"]
