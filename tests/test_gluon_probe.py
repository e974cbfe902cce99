"""kernels/gluon_probe.py compiled for Hopper (sm_90) on this CPU-only machine.

Gluon has no interpreter: the probe's values are checked on the GPU against the Triton loop (its own
``main``). Here the compile: the order of the loop's products, waits and exponentials in the PTX (what
runs under the softmax), and the ptxas report (no spills, no products serialised). In a subprocess: the
interpreter tests set TRITON_INTERPRET=1 for the session, under which nothing is compiled.
"""

import importlib.util
import json

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")

_SCRIPT = """
import json
from megastride.kernels.compile_check import ptxas_usage
from megastride.kernels.gluon_probe import compile_gluon, loop_schedule
out = {}
for ahead, d, rows, stages, warps in [(True, 64, 64, 3, 4), (True, 128, 128, 3, 8), (False, 64, 64, 2, 4),
                                      (True, 64, 128, 3, 4)]:
    k = compile_gluon(ahead, d, rows, stages, warps)
    out[f"{int(ahead)} {d} {rows} {stages} {warps}"] = {"schedule": loop_schedule(k), **ptxas_usage(k)}
try:
    compile_gluon(True, 64, 64, 2, 4)
    out["two stages"] = "compiled"
except Exception as err:
    out["two stages"] = str(err)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled(compiled_lines):
    return json.loads(compiled_lines(_SCRIPT)[-1])


@pytest.mark.parametrize("setting", ["1 64 64 3 4", "1 128 128 3 8"])
def test_ahead_runs_both_products_under_the_softmax(compiled, setting):
    """AHEAD (64 rows on one warpgroup at head dim 64; 128 rows on two at 128): the loop issues block j-1's
    value product and block j+1's score product, then block j's exponentials, then waits for the value
    product only, then for the scores; no spills, and ptxas keeps the products asynchronous."""
    got = compiled[setting]
    assert got["schedule"] == ["pv", "qk", "exp", "wait 1", "wait 0"], got
    assert got["spill_stores"] == got["spill_loads"] == 0, got
    assert got["warnings"] == [], got


def test_without_ahead_only_the_value_product_runs_under_the_softmax(compiled):
    got = compiled["0 64 64 2 4"]
    assert got["schedule"] == ["qk", "pv", "wait 1", "exp", "wait 0"], got
    assert got["spill_stores"] == got["spill_loads"] == 0 and got["warnings"] == [], got


def test_the_report_shows_a_setting_that_spills_and_serialises(compiled):
    """128 rows on one warpgroup hold two 128x128 fp32 score tiles a thread can't: the report must say so
    (what the two tests above would catch in a setting that regressed)."""
    got = compiled["1 64 128 3 4"]
    assert got["spill_stores"] > 0 and got["registers"] == 255, got
    assert any("serialized" in w for w in got["warnings"]), got


def test_ahead_with_two_slots_is_refused(compiled):
    """Block j+1's scores are issued before block j-1's slot is free, so AHEAD with two slots would wait
    for a load never issued: refused when compiled."""
    assert "AHEAD needs 3 slots" in compiled["two stages"], compiled["two stages"]
