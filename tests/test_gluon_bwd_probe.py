"""kernels/gluon_bwd_probe.py compiled for Hopper (sm_90) on this CPU-only machine.

Gluon has no interpreter: the probe's values are checked on the GPU against the Triton dK/dV probe (its own
``main``). Here the compile: the order of the step's products, waits and exponentials in the PTX (what runs
under what), the ptxas report (spills, products serialised) and the products a step. In a subprocess: the
interpreter tests set TRITON_INTERPRET=1 for the session, under which nothing is compiled.
"""

import importlib.util
import json

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")

_SCRIPT = """
import json
from megastride.kernels.compile_check import first_mma_loop, ptxas_usage
from megastride.kernels.gluon_bwd_probe import compile_gluon_dkdv
from megastride.kernels.gluon_probe import loop_schedule
out = {}
for d, bn, bm, stages in [(64, 64, 64, 3), (128, 64, 32, 3), (128, 128, 32, 2)]:
    k = compile_gluon_dkdv(d, bn, bm, stages)
    loop = first_mma_loop(k)
    out[f"{d} {bn} {bm} {stages}"] = {"schedule": loop_schedule(k), "hgmma": loop.get("HGMMA"),
                                      "mufu": loop.get("MUFU"), **ptxas_usage(k)}
try:
    compile_gluon_dkdv(64, 64, 64, 1)
    out["one stage"] = "compiled"
except Exception as err:
    out["one stage"] = str(err)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled(compiled_lines):
    return json.loads(compiled_lines(_SCRIPT)[-1])


@pytest.mark.parametrize("setting, hgmma, mufu", [("64 64 64 3", 16, 32), ("128 64 32 3", 20, 16)])
def test_the_step_runs_its_exponentials_and_ds_under_products(compiled, setting, hgmma, mufu):
    """Both score products issued, a wait that leaves dP^T running under the exponentials, the dV product
    issued, a wait that leaves it running under dS, the dK product issued and left running into the next
    step; no spills and no products serialised by ptxas. Products a step: four of (keys x queries x head
    dim) in m64 x n x k16 instructions (64 keys: one m64 row of instructions; the score products' k is the
    head dim, the gradient products' k the queries); exponentials: keys x queries / 128 threads."""
    got = compiled[setting]
    assert got["schedule"] == ["qk", "qk", "wait 1", "exp", "pv", "wait 1", "pv"], got
    assert got["spill_stores"] == got["spill_loads"] == 0 and got["warnings"] == [], got
    assert (got["hgmma"], got["mufu"]) == (hgmma, mufu), got


def test_the_report_shows_a_setting_that_spills_and_serialises(compiled):
    """128 keys at head dim 128 on one warpgroup hold two 128x128 fp32 gradients a thread can't: the report
    must say so (what the test above would catch in a setting that regressed)."""
    got = compiled["128 128 32 2"]
    assert got["spill_stores"] > 0 and got["registers"] == 255, got
    assert any("serialized" in w for w in got["warnings"]), got


def test_one_slot_is_refused(compiled):
    """Step t's tiles must land while step t-1's products still read theirs: one slot is refused."""
    assert "the ring needs two slots" in compiled["one stage"], compiled["one stage"]


def test_tile_order_walks_items_as_named():
    """(tile, head) items tile * heads + head: "heads" one head's tiles after another (a (tiles, heads)
    grid), "tiles" every head's tile together, "heaviest" those of the longest lists first (64-row tiles:
    two a 128-block; lists of 3, 0 and 2 entries)."""
    torch = pytest.importorskip("torch")
    from megastride.kernels.gluon_bwd_probe import tile_order

    ptr = torch.tensor([0, 3, 3, 5])
    assert tile_order(ptr, 2, 64, "heads").tolist() == [0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11]
    assert tile_order(ptr, 2, 64, "tiles").tolist() == list(range(12))
    assert tile_order(ptr, 2, 64, "heaviest").tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7]
    assert tile_order(ptr, 1, 128, "heaviest").tolist() == [0, 2, 1]
    with pytest.raises(ValueError, match="order must be one of heads, tiles, heaviest"):
        tile_order(ptr, 2, 64, "longest")


def test_dq_reference_is_autograds_gradient_of_block_list_attention():
    """The dQ probe's checker: from the lse and delta of the forward (ws_probe.lse_and_delta), dQ of sampled
    64-row tiles equals autograd's gradient of softmax(Q K^T / sqrt(D)) V over each row's key blocks."""
    torch = pytest.importorskip("torch")
    from megastride.kernels import ws_probe
    from megastride.kernels.gluon_bwd_probe import dq_reference

    torch.manual_seed(0)
    heads, n, d = 2, 512, 16
    ptr, idx = ws_probe.block_lists(n // 128, 2)  # row block i visits the two before it (block 0 none)
    q, k, v, do = (torch.randn(heads, n, d) for _ in range(4))
    lse, delta = ws_probe.lse_and_delta(q, k, v, do, ptr, idx)
    tiles = [2, 3, 5, 7]
    got = dq_reference(q, k, v, do, lse, delta, ptr, idx, tiles)

    qa = q.clone().requires_grad_()
    loss = 0
    for i in range(1, n // 128):
        keys = (idx[ptr[i]:ptr[i + 1]].long()[:, None] * 128 + torch.arange(128)).reshape(-1)
        rows = slice(i * 128, (i + 1) * 128)
        out = torch.softmax(qa[:, rows] @ k[:, keys].transpose(1, 2) * d ** -0.5, -1) @ v[:, keys]
        loss = loss + (out * do[:, rows]).sum()
    loss.backward()
    want = torch.cat([qa.grad[:, t * 64:(t + 1) * 64] for t in tiles], 1)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (got - want).abs().max()  # fp32 throughout
