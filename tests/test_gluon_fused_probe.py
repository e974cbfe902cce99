"""kernels/gluon_fused_probe.py compiled for Hopper (sm_90) on this CPU-only machine.

The probe's values are checked on the GPU (its ``main``: dK and dV against the Triton dK/dV probe, dQ against
fp32 PyTorch on sampled tiles). Here what the compile must show for its timings to mean what they say: five
products a step in the loop, one asynchronous TMA reduce of dQ a step (``UTMAREDG``: the Gluon builder's
reduce that ``tma`` does not export), and no product serialised by ptxas. In a subprocess, as
tests/test_gluon_bwd_probe.py (nothing compiles under the interpreter).
"""

import importlib.util
import json

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")

_SCRIPT = """
import json
from megastride.kernels.compile_check import first_mma_loop, ptxas_usage
from megastride.kernels.gluon_fused_probe import compile_fused
out = {}
for name, kw in [("64x64", dict(block_n=64, block_m=64, stages=3)),
                 ("128x32 swapped", dict(block_n=128, block_m=32, stages=4, swap=True)),
                 ("128x32 pairs", dict(block_n=128, block_m=32, stages=4, pair=True)),
                 ("128x32 swapped, no dQ product", dict(block_n=128, block_m=32, stages=4, swap=True, send=-1))]:
    k = compile_fused(64, **kw)
    loop = first_mma_loop(k)
    out[name] = {"hgmma": loop.get("HGMMA", 0), "reduces": loop.get("UTMAREDG", 0), **ptxas_usage(k)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled(compiled_lines):
    return json.loads(compiled_lines(_SCRIPT)[-1])


@pytest.mark.parametrize("setting, hgmma", [("64x64", 16 + 4), ("128x32 swapped", 24 + 8), ("128x32 pairs", 24 + 8)])
def test_a_step_runs_five_products_and_one_reduce_unserialised(compiled, setting, hgmma):
    """The dK/dV loop's four products (m64 x n x k16 instructions: 16 at 64 keys x 64 queries, 24 at 128 x 32)
    plus dQ's: 64 x 64 x 64 (4), or 64 x 32 x 128 swapped (8), or 64 x 64 x 128 every other step (8, in its
    branch); one TMA reduce in the loop; ptxas reports no serialised products."""
    got = compiled[setting]
    assert got["hgmma"] == hgmma and got["reduces"] == 1, got
    assert got["warnings"] == [], got


def test_without_the_dq_product_the_loop_has_four_products_and_no_reduce(compiled):
    """The SEND=-1 diagnostic (the timing of the dK/dV products alone under the same step-end wait) must drop
    exactly the dQ product and its reduce, and spill nothing."""
    got = compiled["128x32 swapped, no dQ product"]
    assert got["hgmma"] == 24 and got["reduces"] == 0, got
    assert got["spill_stores"] == 0 and got["warnings"] == [], got
    assert compiled["64x64"]["spill_stores"] == 0, compiled["64x64"]
