"""kernels/gluon_ws_probe.py (the fused dK/dV + dQ loop with loader and dQ sender warps) compiled for Hopper
(sm_90) on this CPU-only machine; its values are checked on the GPU by its ``main`` (dK and dV against the
Triton probe, dQ against fp32 PyTorch). What its timings rest on: five products a consumer step with no load or
reduce in the loop, setmaxnreg between the consumer warpgroups and the single warps, and (lse and delta through
the ring, dK's dS^T from shared memory) a loop ptxas fits in 240 registers without spilling, where the first
form of the probe spilled. In a subprocess, as tests/test_gluon_bwd.py (nothing compiles under the interpreter).
"""

import importlib.util
import json

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")

_SCRIPT = """
import json
from megastride.kernels.compile_check import first_mma_loop, ptxas_usage, sass
from megastride.kernels.gluon_ws_probe import compile_ws
out = {}
for name, kw in [("first form", dict(rows=0, dk_smem=False)), ("rows via ring, dK from smem", dict())]:
    k = compile_ws(64, **kw)
    loop, code = first_mma_loop(k), sass(k)
    out[name] = {"hgmma": loop.get("HGMMA", 0), "loop_io": loop.get("UTMALDG", 0) + loop.get("UTMAREDG", 0),
                 "reloads": loop.get("LDL", 0), "total": loop.get("total"), "reduces": code.count("UTMAREDG"),
                 "setmaxnreg": code.count("USETMAXREG"), **ptxas_usage(k)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled(compiled_lines):
    return json.loads(compiled_lines(_SCRIPT)[-1])


def test_the_consumers_loop_holds_only_the_step_and_fits_its_registers(compiled):
    """Both forms: 32 m64 product instructions a consumer step (S^T, dP^T, dV, dQ^T, dK at 128 keys x 32
    queries), no TMA load or reduce in the consumer's loop (the single warps issue them), setmaxnreg present.
    With lse and delta through the ring and dK's dS^T from shared memory: no spill in the whole kernel and
    fewer instructions a step than the first form, which spills in its loop."""
    first, final = compiled["first form"], compiled["rows via ring, dK from smem"]
    for got in (first, final):
        assert got["hgmma"] == 32 and got["loop_io"] == 0 and got["reduces"] >= 2 and got["setmaxnreg"] > 0, got
        assert got["warnings"] == [], got
    assert final["spill_stores"] == final["spill_loads"] == 0 and final["reloads"] == 0, final
    assert first["reloads"] > 0 and final["total"] < first["total"], (first, final)
