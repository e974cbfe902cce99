"""kernels/gluon_fwd.py (the forward of natural-order parts in Gluon) compiled for Hopper (sm_90) here, and
the switch that chooses it. Gluon has no interpreter: its values are checked on the GPU against the reference
(tests/test_kernels_gpu.py). Compiled in a subprocess: the interpreter tests set TRITON_INTERPRET=1 for the
session, under which nothing is compiled.
"""

import importlib.util
import json

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")

# the launches forward_part makes by default (gluon_fwd.FWD_LAUNCHES = 2): the partial blocks (STEPS 2), then
# the full ones merging with them (STEPS 1, LOAD_PREV), at both head dims' default tiles
_SCRIPT = """
import json
from megastride.kernels.compile_check import first_mma_loop, ptxas_usage
from megastride.kernels.gluon_fwd import compile_for
from megastride.kernels.gluon_probe import loop_schedule
out = {}
for d, steps in [(128, 1), (64, 1), (128, 2)]:
    k = compile_for(d, steps=steps, load_prev=True)
    loop = first_mma_loop(k)
    out[f"{d} {steps}"] = {"schedule": loop_schedule(k), "hgmma": loop.get("HGMMA"),
                           "spill_reloads": loop.get("LDL", 0), **ptxas_usage(k)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled(compiled_lines):
    return json.loads(compiled_lines(_SCRIPT)[-1])


@pytest.mark.parametrize("setting, schedule", [
    # D=128, 128 rows on eight warps: block t-1's values and block t+1's scores issued, then block t's softmax
    ("128 1", ["pv", "qk", "exp", "wait 1", "wait 0"]),
    # D=64, 64 rows on one warpgroup: block t's scores and block t-1's values, a wait for the scores, the softmax
    # under the value product
    ("64 1", ["qk", "pv", "wait 1", "exp", "wait 0"])])
def test_the_full_blocks_loop_runs_its_softmax_under_the_products_without_spilling(compiled, setting, schedule):
    """The full blocks' loop: the order of its products, waits and exponentials in the PTX, no spill reloads in
    it and no serialised products (ptxas warnings); its merge with the partial blocks' rows after the loop."""
    got = compiled[setting]
    assert got["schedule"] == schedule, got
    assert got["warnings"] == [] and got["spill_reloads"] == 0, got


def test_the_partial_blocks_compile_alone(compiled):
    """The first launch, the partial blocks under the token predicate alone (its registers spill there, on the
    diagonal's few steps a row: why the full blocks get a launch of their own)."""
    got = compiled["128 2"]
    assert got["schedule"][:2] == ["qk", "pv"] and got["warnings"] == [], got


def test_the_switches_name_bad_values_and_stay_off_without_a_gpu(monkeypatch):
    """MEGASTRIDE_BLOCKSPARSE_GLUON_FWD, ..._GLUON_FWD_LAUNCHES and ..._GLUON_FWD_TILES: a bad value is named;
    the tiles that fit a block; on the CPU (no Hopper GPU) no part takes the Gluon forward whatever the
    setting."""
    torch = pytest.importorskip("torch")
    from megastride.kernels import blocksparse as B
    from megastride.kernels import gluon_fwd
    from megastride.kernels import patterns as P

    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_FWD", "on")
    with pytest.raises(ValueError, match="MEGASTRIDE_BLOCKSPARSE_GLUON_FWD must be one of 0, 1, auto; got 'on'"):
        B.gluon_fwd_setting()
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_LAUNCHES", "0")
    with pytest.raises(ValueError, match="GLUON_FWD_LAUNCHES must be 1 or 2, got '0'"):
        gluon_fwd.launches()
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_LAUNCHES")
    assert gluon_fwd.launches() == 2
    assert gluon_fwd.tiles(128) == (128, 128, 3, 8, 1) and gluon_fwd.tiles(64) == (64, 128, 2, 4, 0)
    # 128-key steps need 128-blocks; 3 slots of 128 x 128 K and V tiles and 128 rows of Q: 224 KB at D=128
    assert gluon_fwd.fits(128, 128) and gluon_fwd.fits(64, 128) and not gluon_fwd.fits(64, 64)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_TILES", "64x64s2w4a0")
    assert gluon_fwd.tiles(128) == (64, 64, 2, 4, 0) and gluon_fwd.fits(64, 64)
    # two slots of 64 keys cannot take 128 fp32 rows on the way out; four slots of 128 x 128 exceed shared memory
    for raw, fits in (("128x64s2w8a0", False), ("128x128s4w8a1", False)):
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_TILES", raw)
        assert gluon_fwd.fits(128, 128) is fits
    for bad in ("128x128s2w8a1", "96x128s3w8a0", "128x128s3w8", "128x128s3w2a0"):
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_TILES", bad)
        with pytest.raises(ValueError, match="MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_TILES"):
            gluon_fwd.tiles(128)
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_TILES")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_FWD", "1")
    layout = P.build_layout(P.same_for_all_heads(P.fixed(256, 128), 2), 1024, 128)
    q = torch.zeros(1, 2, 1024, 128, dtype=torch.bfloat16)
    assert not B.gluon_forward(B._part_meta(layout.parts[0], 1024, q.device), layout, q, q, q, q)
