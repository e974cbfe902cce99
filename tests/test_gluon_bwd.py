"""kernels/gluon_bwd.py (the backward of natural-order parts in Gluon) compiled for Hopper (sm_90) here, and
the switch that chooses it. Gluon has no interpreter: its values are checked on the GPU against the reference
(tests/test_kernels_gpu.py, ``gpu_check --gluon 1``). Compiled in a subprocess: the interpreter tests set
TRITON_INTERPRET=1 for the session, under which nothing is compiled.
"""

import collections
import importlib.util
import itertools
import json
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")

# the launches blocksparse makes (gluon_bwd.DKDV_LAUNCHES): D=128 dK/dV as partial blocks of whole columns,
# then full ones in column segments (STEPS 2, then 1 with SPLIT), D=64 dK/dV and dQ at both head dims in one
# (STEPS 0), with and without earlier sums
_SCRIPT = """
import json
from megastride.kernels.compile_check import first_mma_loop, ptxas_usage
from megastride.kernels.gluon_bwd import compile_for
from megastride.kernels.gluon_probe import loop_schedule
out = {}
for kernel, d, steps, prev, split, tiles in [("dkdv", 128, 1, True, True, None), ("dkdv", 128, 2, False, False, None),
                                             ("dkdv", 64, 0, False, False, None), ("dq", 128, 0, True, False, None),
                                             ("dq", 64, 0, False, False, None),
                                             ("dkdv", 64, 0, False, False, (128, 64, 3, 8)),
                                             ("dkdv", 64, 0, False, False, (64, 32, 4, 4, 168)),
                                             ("dq", 64, 0, False, False, (64, 32, 4, 4, 128))]:
    k = compile_for(kernel, d, steps=steps, load_prev=prev, split=split, tiles=tiles and tiles[:4],
                    maxnreg=tiles[4] if tiles and len(tiles) > 4 else None)
    loop = first_mma_loop(k)
    name = "" if not tiles else " w8" if len(tiles) == 4 else f" r{tiles[4]}"
    out[f"{kernel} {d} {steps}" + name] = {"schedule": loop_schedule(k), "hgmma": loop.get("HGMMA"),
                                    "spill_reloads": loop.get("LDL", 0), "waits": loop.get("WARPGROUP", 0),
                                    **ptxas_usage(k)}
# the dK/dV kernel that also sends dQ (FUSED_TILES), into fp32 and fp16 sums, with earlier sums and segments,
# and into fp16 sums over whole columns with its rows loaded a step ahead (look_ahead's "auto") and without
for name, d, sums, prev, split, ahead in [("fp32", 64, "fp32", False, False, None),
                                         ("fp16", 64, "fp16", True, True, None),
                                         ("fp16 ahead", 64, "fp16", False, False, None),
                                         ("fp16 not ahead", 64, "fp16", False, False, False),
                                         ("fp16 d128 segments", 128, "fp16", False, True, None)]:
    k = compile_for("dkdv", d, load_prev=prev, split=split, dq_sums=sums, ahead=ahead)
    loop = first_mma_loop(k)
    out[f"fused {name}"] = {"hgmma": loop.get("HGMMA"), "reduces": loop.get("UTMAREDG", 0),
                            "spill_reloads": loop.get("LDL", 0), "shared": k.metadata.shared,
                            **ptxas_usage(k)}
# the warp-specialised fused kernel (WS_TILES): fp16 sums over whole columns (the default at 1M), fp32 sums,
# with earlier sums
from megastride.kernels.compile_check import sass
from megastride.kernels.gluon_bwd import HALVES_TILES
compile_tiles = HALVES_TILES[64]
from megastride.kernels.gluon_bwd import columns_shared_bytes, columns_tiles
for name, d, sums, prev in [("fp16", 64, "fp16", False), ("fp32", 64, "fp32", False),
                            ("fp16 prev", 64, "fp16", True), ("fp16 d128", 128, "fp16", False),
                            ("fp32 d128", 128, "fp32", False)]:
    ws_tiles = columns_tiles(d, 4 if sums == "fp32" else 2)
    k = compile_for("dkdv_ws", d, load_prev=prev, dq_sums=sums, tiles=ws_tiles)
    loop, code = first_mma_loop(k), sass(k)
    out[f"ws {name}"] = {"hgmma": loop.get("HGMMA"), "loop_reduces": loop.get("UTMAREDG", 0),
                         "loop_loads": loop.get("UTMALDG", 0), "spill_reloads": loop.get("LDL", 0),
                         "total": loop.get("total"), "reduces": code.count("UTMAREDG"),
                         "setmaxnreg": code.count("USETMAXREG"), "warps": k.metadata.num_warps,
                         "shared": k.metadata.shared,
                         "shared_counted": columns_shared_bytes(d, ws_tiles, 4 if sums == "fp32" else 2),
                         **ptxas_usage(k)}
# the halves kernel (HALVES_TILES; one column a program, its keys split between the consumers): its three schedules
# into fp16 sums, fp32 sums, with earlier sums; at head dim 128 (64 queries a step, dQ split by the head dim)
from megastride.kernels.gluon_bwd import halves_shared_bytes, halves_tiles
for name, d, sums, prev, sched, split in [
        ("fp16", 64, "fp16", False, None, False), ("fp32", 64, "fp32", False, None, False),
        ("fp16 prev", 64, "fp16", True, None, False), ("fp16 m0", 64, "fp16", False, 0, False),
        ("fp16 m2", 64, "fp16", False, 2, False), ("fp16 segments", 64, "fp16", True, None, True),
        ("fp16 d128", 128, "fp16", False, None, False), ("fp32 d128", 128, "fp32", False, None, False),
        ("fp16 prev d128", 128, "fp16", True, None, False), ("fp16 m0 d128", 128, "fp16", False, 0, False),
        ("fp16 segments d128", 128, "fp16", True, None, True)]:
    t = (*HALVES_TILES[d][:5], HALVES_TILES[d][5] if sched is None else sched)
    k = compile_for("dkdv_halves", d, load_prev=prev, dq_sums=sums, tiles=t, split=split)
    loop, code = first_mma_loop(k), sass(k)
    out[f"halves {name}"] = {"hgmma": loop.get("HGMMA"), "loop_reduces": loop.get("UTMAREDG", 0),
                             "loop_loads": loop.get("UTMALDG", 0), "spill_reloads": loop.get("LDL", 0),
                             "total": loop.get("total"), "reduces": code.count("UTMAREDG"),
                             "atomics": code.count("RED.E.ADD.F32") + code.count("ATOMG.E.ADD.F32"),
                             "setmaxnreg": code.count("USETMAXREG"), "warps": k.metadata.num_warps,
                             "shared": k.metadata.shared, "shared_counted": halves_shared_bytes(d, t, 4 if sums == "fp32" else 2),
                             **ptxas_usage(k)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled(compiled_lines):
    return json.loads(compiled_lines(_SCRIPT)[-1])


@pytest.mark.parametrize("setting, hgmma", [("dkdv 128 1", 24), ("dkdv 64 0", 16), ("dkdv 64 0 w8", 16),
                                            ("dkdv 64 0 r168", 12)])
def test_dkdv_runs_its_exponentials_and_ds_under_products_without_spilling(compiled, setting, hgmma):
    """The full blocks' dK/dV loop: both score products issued, a wait that leaves dP^T running under the
    exponentials, the dV product, a wait that leaves it under dS, the dK product left running into the next
    step; products not serialised by ptxas (a serialised loop waits after each: 32 warpgroup instructions an
    iteration at D=64 instead of 6) and no spill reloads in it; also with 128 keys on two warpgroups (w8,
    ``MEGASTRIDE_BLOCKSPARSE_GLUON_TILES``: each warpgroup's products per step as one's at 64 keys), and with
    32 queries a step under a cap of 168 registers (three programs an SM: its spills stay outside the loop)."""
    got = compiled[setting]
    assert got["schedule"] == ["qk", "qk", "wait 1", "exp", "pv", "wait 1", "pv"], got
    assert got["warnings"] == [] and got["waits"] <= 8, got
    assert got["spill_reloads"] == 0 and got["hgmma"] == hgmma, got
    if setting.endswith("r168"):
        assert got["registers"] <= 168, got


@pytest.mark.parametrize("setting", ["dq 128 0", "dq 64 0", "dq 64 0 r128"])
def test_dq_runs_its_exponentials_under_dp_without_spilling(compiled, setting):
    """The dQ loop: both score products, a wait leaving dP under the exponentials, dS, the dQ product left
    running; at both head dims its full and partial loops in one kernel, nothing spilled or serialised; also
    with 32 keys a step under a cap of 128 registers (four programs an SM)."""
    got = compiled[setting]
    assert got["schedule"] == ["qk", "qk", "wait 1", "exp", "wait 0", "pv"], got
    assert got["warnings"] == [] and got["spill_stores"] == got["spill_loads"] == 0, got
    assert got["registers"] <= (128 if setting.endswith("r128") else 255), got


def test_partial_blocks_compile_alone(compiled):
    """The head-dim-128 dK/dV's first launch, the partial blocks alone (the mask's registers spill there,
    on the diagonal's 1-2% of the steps: why the full blocks get a launch of their own)."""
    got = compiled["dkdv 128 2"]
    assert got["schedule"][:3] == ["qk", "qk", "wait 1"] and got["warnings"] == [], got


@pytest.mark.parametrize("sums, hgmma", [("fp32", 32), ("fp16", 32), ("fp16 ahead", 32), ("fp16 not ahead", 32),
                                         ("fp16 d128 segments", 28)])
def test_the_fused_dkdv_kernel_sends_dq_a_step_by_one_reduce_unserialised(compiled, sums, hgmma):
    """MEGASTRIDE_BLOCKSPARSE_GLUON_DQ: the dK/dV loop at 128 keys x 32 queries runs its four products (24
    m64 instructions) plus dQ^T's (8: 64 x 32 x 128) and one asynchronous TMA reduce an iteration (at head dim
    128, column segments: 64 keys, 20 + 8); ptxas serialises none of them. Its spills (a few reloads an
    iteration, as the probe's: the timing counts them) are bounded, and two programs fit an SM's 228 KB of
    shared memory."""
    got = compiled[f"fused {sums}"]
    assert got["hgmma"] == hgmma and got["reduces"] == 1 and got["warnings"] == [], got
    assert got["spill_reloads"] <= 10 and got["shared"] <= 113 * 1024, got


@pytest.mark.parametrize("sums, hgmma", [("fp16", 32), ("fp32", 32), ("fp16 prev", 32), ("fp16 d128", 28),
                                         ("fp32 d128", 28)])
def test_the_warp_specialised_consumers_loop_is_products_and_exponentials(compiled, sums, hgmma):
    """``_dkdv_ws_kernel``: the consumer's full-block loop runs the fused step's five products (32 m64
    instructions at head dim 64, 128 keys x 32 queries; 28 at head dim 128, 64 x 32) with neither a TMA load
    nor a reduce in it (the loader and sender warps issue them: the kernel's reduces lie outside the consumers'
    loops) and at most 2 spill reloads at 240 registers (the fused kernel's loop: 483 instructions, 3 reloads at
    255); registers move by setmaxnreg between 12 warps (two consumer warpgroups, four single warps padded to a
    warpgroup); two columns' buffers fit one SM's shared memory; ptxas serialises no product."""
    from megastride.kernels.gluon_bwd import COLUMNS_SHARED_SLACK

    got = compiled[f"ws {sums}"]
    assert got["hgmma"] == hgmma and got["loop_reduces"] == 0 and got["loop_loads"] == 0, got
    assert got["reduces"] >= 2 and got["setmaxnreg"] > 0 and got["warps"] == 12, got
    assert got["spill_reloads"] <= 2 and got["total"] < 400 and got["warnings"] == [], got
    assert got["shared"] <= 227 * 1024, got
    # its buffers counted within the slack (columns_tiles gives fp32 sums at head dim 128 one staging buffer a
    # consumer: two need 239,936 bytes, which the H200 refused to launch)
    assert 0 <= got["shared"] - got["shared_counted"] <= COLUMNS_SHARED_SLACK, got


@pytest.mark.parametrize("setting", ["fp16", "fp32", "fp16 prev", "fp16 m0", "fp16 m2", "fp16 segments", "fp16 d128",
                                     "fp32 d128", "fp16 prev d128", "fp16 m0 d128", "fp16 segments d128"])
def test_the_halves_kernels_consumer_loop_is_products_and_exponentials(compiled, setting):
    """``_dkdv_halves_kernel``: a consumer's full-block loop runs its five products on 64 keys x 128 queries
    (32 m64 instructions: 4 + 4 score, 8 + 8 dV and dK, 8 dQ over both key halves) with neither a TMA load nor a
    reduce in it, at most 2 spill reloads at 240 registers, in 600 instructions or fewer (the two-columns
    kernel: 381 for half the pairs); 12 warps (two consumer warpgroups, a loader and two senders padded to a
    warpgroup); one program's buffers within an SM's 227 KB of shared memory, fp32 staging too; ptxas
    serialises no product, in each schedule. At head dim 128 (64 keys x 64 queries: 8 + 8 score, 4 + 4 dV and
    dK, 8 dQ for all 64 queries and half the head dim) the same count and bounds, in 450 instructions or fewer.
    ``halves_shared_bytes`` (the shape check ``backward_part`` makes) counts the compiler's allocation to within
    ``HALVES_SHARED_SLACK`` below it. On column segments (with earlier sums) the same loop, the keys' sums
    added into the workspace by fp32 atomics after it (none without segments)."""
    from megastride.kernels.gluon_bwd import HALVES_SHARED_SLACK

    got = compiled[f"halves {setting}"]
    assert got["hgmma"] == 32 and got["loop_reduces"] == 0 and got["loop_loads"] == 0, got
    assert got["reduces"] >= 2 and got["setmaxnreg"] > 0 and got["warps"] == 12, got
    limit = 450 if setting.endswith("d128") else 600
    assert got["spill_reloads"] <= 2 and got["total"] <= limit and got["warnings"] == [], got
    assert got["shared"] <= 227 * 1024, got
    assert 0 <= got["shared"] - got["shared_counted"] <= HALVES_SHARED_SLACK, got
    assert (got["atomics"] > 0) == ("segments" in setting), got


def test_the_warp_specialised_switch(monkeypatch):
    """``warp_specialized``: by default the halves kernel where it can run at head dims 64 and 128 (128-blocks), else the
    two-columns kernel where that can (head dims 64 and 128, a block its key tiles divide), lse and delta rows
    TMA can address either way; each kernel where asked for and it can run (the halves kernel also at head dim
    128, 128-blocks), neither with "0" or elsewhere; a bad value is named. ``halves_tiles``: the default
    schedule, a replacement, bad ones named; ``backward_part`` refuses tiles whose buffers an SM cannot hold."""
    from megastride.kernels import gluon_bwd as G

    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_GLUON_WS", raising=False)
    lse = torch.zeros(2, 4, 1024)
    assert G.warp_specialized(64, 128, lse, lse.clone()) == "halves"
    assert G.warp_specialized(128, 128, lse, lse.clone()) == "halves"  # head dim 128: 64 queries a step
    assert G.warp_specialized(128, 64, lse, lse.clone()) == "columns"  # 64-blocks: the halves kernel takes 128 keys
    assert G.warp_specialized(64, 256, lse, lse.clone()) == "columns"  # two 128-key tiles a block
    assert not G.warp_specialized(64, 64, lse, lse.clone())  # 128-key tiles in 64-blocks
    assert not G.warp_specialized(32, 128, lse, lse.clone())  # no tiles at head dim 32
    assert not G.warp_specialized(64, 128, lse[..., 1:1001], lse.clone())  # rows not 16-byte aligned
    assert not G.warp_specialized(64, 128, lse.transpose(1, 2), lse.clone())  # positions not unit stride
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_WS", "0")
    assert not G.warp_specialized(64, 128, lse, lse.clone())
    for value in ("1", "columns"):
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_WS", value)
        assert G.warp_specialized(64, 128, lse, lse.clone()) == "columns"
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_WS", "halves")
    assert G.warp_specialized(64, 128, lse, lse.clone()) == "halves"
    assert G.warp_specialized(128, 128, lse, lse.clone()) == "halves"  # asked for: 64 queries a step
    assert not G.warp_specialized(128, 64, lse, lse.clone()) and not G.warp_specialized(64, 256, lse, lse.clone())
    assert not G.warp_specialized(64, 128, lse[..., 1:1001], lse.clone())
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_WS", "on")
    with pytest.raises(ValueError,
                       match="MEGASTRIDE_BLOCKSPARSE_GLUON_WS must be auto, 0, 1, columns or halves, got 'on'"):
        G.warp_specialized(64, 128, lse, lse.clone())
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_TILES", raising=False)
    assert G.halves_tiles(64) == G.HALVES_TILES[64]
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_TILES", "s3g1d2m2")
    assert G.halves_tiles(64) == (128, 128, 3, 1, 2, 2)
    for bad in ("s1g2d2m0", "s2g2d1m2", "s2g2d2m3", "s2g2d2"):
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_TILES", bad)
        with pytest.raises(ValueError, match=f"MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_TILES: '{bad}' is not sSgGdDmM"):
            G.halves_tiles(64)
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_SPLIT", raising=False)
    # by default segments take the halves kernel at head dim 128, the unspecialised kernel at 64
    assert G.halves_split(128) and not G.halves_split(64) and G.HALVES_SPLIT_DIMS == (128,)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_SPLIT", "1")
    assert G.halves_split(64) and G.halves_split(128)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_SPLIT", "0")
    assert not G.halves_split(64) and not G.halves_split(128)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_SPLIT", "yes")
    with pytest.raises(ValueError, match="MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_SPLIT must be 0 or 1, got 'yes'"):
        G.halves_split(128)
    for d, sums in itertools.product(G.HALVES_TILES, (torch.float16, torch.float32)):  # the defaults fit
        G.check_halves_shared(d, G.HALVES_TILES[d], sums)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_TILES", "s4g2d2m1")
    assert G.halves_tiles(128) == (128, 64, 4, 2, 2, 1)
    # four ring slots of 64 x 128 Q and dO tiles: 258 KB with the rest, refused before anything is launched
    x = torch.zeros(1, 2, 256, 128, dtype=torch.bfloat16)
    rows = torch.zeros(1, 2, 256)
    meta = SimpleNamespace(heads=torch.zeros(2, dtype=torch.int32), head_csr=None, min_off=None, codes=None,
                           lists=collections.defaultdict(lambda: None), num_blocks=2, ncomp=1, kinds=8)
    order = torch.zeros(1, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"the halves kernel's tiles \(128, 64, 4, 2, 2, 1\) at head dim 128 with "
                                         r"torch.float16 dQ sums need about 264,\d{3} bytes of shared memory, more than an "
                                         r"SM's 232,448"):
        G.backward_part(x, x, x, x, rows, rows, (x, x, x), (x, x, x), meta, (order, order), 128, 0.1, False,
                        dq_sums=(x.view(torch.float16), torch.ones(1)), ws="halves")

def test_the_fused_steps_rows_loaded_a_step_ahead_spill_less(compiled, monkeypatch):
    """``look_ahead``: each fused step loads the next step's list entry, lse and delta after its reduce is
    issued ("auto": whole columns into fp16 sums, the 1M-token default); ptxas for sm_90 then reloads fewer
    spilled registers an iteration than with the step's own rows loaded at its start. The switch's values."""
    from megastride.kernels import gluon_bwd as G

    ahead, plain = compiled["fused fp16 ahead"], compiled["fused fp16 not ahead"]
    assert ahead["spill_reloads"] < plain["spill_reloads"] and ahead["spill_reloads"] <= 4, (ahead, plain)
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_GLUON_AHEAD", raising=False)
    assert G.look_ahead(torch.float16, False, False)
    assert not any(G.look_ahead(*args) for args in [(torch.float32, False, False), (torch.float16, True, False),
                                                     (torch.float16, False, True)])
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_AHEAD", "1")
    assert G.look_ahead(torch.float32, True, True)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_AHEAD", "0")
    assert not G.look_ahead(torch.float16, False, False)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_AHEAD", "yes")
    with pytest.raises(ValueError, match="MEGASTRIDE_BLOCKSPARSE_GLUON_AHEAD must be auto, 0 or 1, got 'yes'"):
        G.look_ahead(torch.float16, False, False)


def test_the_fused_dq_switch_and_its_fp16_scale(monkeypatch):
    """MEGASTRIDE_BLOCKSPARSE_GLUON_DQ: a bad value is named; off on the CPU. The fp16 sums' multiplier is the
    softmax scale times a power of two that keeps the bound on |dQ| (scale x 2 D max|dO| max|V| max|K|)
    within GLUON_DQ_FP16_BOUND, at most a factor 2 under it, for inputs of any magnitude (here gradients
    of 1e-9, which fp16 would flush to zero unscaled), from the maxima the backward's first launch takes
    (``_bwd_prep``); fp32 sums take the scale alone; a zero, infinite or NaN maximum gives a finite scale
    whose inverse undoes it."""
    torch = pytest.importorskip("torch")
    from megastride.kernels import blocksparse as B
    from megastride.kernels import patterns as P

    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", "bf16")
    with pytest.raises(ValueError, match="MEGASTRIDE_BLOCKSPARSE_GLUON_DQ must be one of auto, 0, fp32, fp16; got 'bf16'"):
        B.gluon_dq_setting()
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ")
    assert B.gluon_dq_setting() == "auto" and B.GLUON_DQ_MIN_LENGTH == 65536
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", "fp16")
    layout = P.build_layout(P.same_for_all_heads(P.fixed(256, 128), 2), 1024, 128)
    q = torch.zeros(1, 2, 1024, 64, dtype=torch.bfloat16)
    assert B.gluon_dq_sums(layout, q, q, q, q) is None  # no Hopper GPU
    gen = torch.Generator().manual_seed(0)
    scale = 64 ** -0.5
    for magnitude in (1e-9, 1.0, 3e3):
        k, v = (torch.randn(1, 2, 256, 64, generator=gen) for _ in range(2))
        do = torch.randn(1, 2, 256, 64, generator=gen) * magnitude
        k, v, do = (x.to(torch.bfloat16) for x in (k, v, do))
        maxes = torch.zeros(3)
        B._bwd_prep(do, do, torch.empty(1, 2, 256), k, v, None, maxes)
        mult, inverse = B._dq_multiplier(maxes, 64, scale, torch.float16, do.device)
        power = mult.item() / scale
        assert power == 2.0 ** round(torch.log2(torch.tensor(power)).item()) and inverse.item() * power == 1.0
        bound = scale * 2 * 64 * do.abs().max().item() * v.abs().max().item() * k.abs().max().item()
        assert B.GLUON_DQ_FP16_BOUND / 2 < bound * power <= B.GLUON_DQ_FP16_BOUND, (magnitude, bound, power)
    mult, inverse = B._dq_multiplier(None, 64, scale, torch.float32, do.device)
    assert mult.item() == pytest.approx(scale) and inverse.item() == 1.0
    for top in ([0.0, 1.0, 1.0], [float("inf"), 1.0, 1.0], [float("nan"), 1.0, 1.0]):
        mult, inverse = B._dq_multiplier(torch.tensor(top), 64, scale, torch.float16, do.device)
        assert torch.isfinite(mult).all() and torch.isfinite(inverse).all() and mult.item() > 0, top
        assert mult.item() * inverse.item() == scale, top


def test_the_fused_dq_is_taken_where_its_setting_and_every_part_allow(monkeypatch):
    """``gluon_dq_sums`` with the Gluon backward's own checks (a Hopper GPU) granted: "auto" takes fp16 sums from
    65,536 tokens at head dim 64 and 128 on 128-blocks (``GLUON_DQ_AUTO_DIMS``; at 128 only where the halves kernel runs)
    and nothing below; "fp32"/"fp16" at any length and at head dim 128 too;
    never on 64-blocks at head dim 64 (128-key tiles do not fit) or where a part cannot run the Gluon backward
    (a strided head's permuted part)."""
    torch = pytest.importorskip("torch")
    from megastride.kernels import blocksparse as B
    from megastride.kernels import patterns as P

    granted = lambda meta, layout, q, *t, setting=None: not meta.permuted  # noqa: E731
    monkeypatch.setattr(B, "gluon_backward", granted)
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", raising=False)
    fixed = {n: P.build_layout(P.same_for_all_heads(P.fixed(4096, 128), 2), n, 128)
             for n in (32768, 65536, 131072, 262144)}
    q = {n: torch.empty(1, 2, n, 64, dtype=torch.bfloat16) for n in fixed}
    assert B.gluon_dq_sums(fixed[262144], q[262144]) == torch.float16
    assert B.gluon_dq_sums(fixed[131072], q[131072]) == torch.float16
    assert B.gluon_dq_sums(fixed[65536], q[65536]) == torch.float16
    assert B.gluon_dq_sums(fixed[32768], q[32768]) is None
    wide = torch.empty(1, 2, 262144, 128, dtype=torch.bfloat16)
    assert B.gluon_dq_sums(fixed[262144], wide) == torch.float16  # head dim 128 too, on the halves kernel
    wide_small = P.build_layout(P.same_for_all_heads(P.fixed(4096, 64), 2), 262144, 64)
    assert B.gluon_dq_sums(wide_small, wide) is None  # not on 64-blocks there: no halves kernel (asked for: yes)
    small = P.build_layout(P.same_for_all_heads(P.fixed(4096, 64), 2), 262144, 64)
    assert B.gluon_dq_sums(small, q[262144]) is None
    strided = P.build_layout(P.same_for_all_heads(P.strided(512), 2), 262144, 128)
    assert any(B._part_meta(part, 262144, q[262144].device).permuted for part in strided.parts)
    assert B.gluon_dq_sums(strided, q[262144]) is None
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", "fp32")
    assert B.gluon_dq_sums(fixed[65536], q[65536]) == torch.float32
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", "fp16")
    assert B.gluon_dq_sums(fixed[262144], wide) == torch.float16  # 64-key tiles at head dim 128
    assert B.gluon_dq_sums(wide_small, wide) == torch.float16  # on 64-blocks too, where asked for
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DQ", "0")
    assert B.gluon_dq_sums(fixed[262144], q[262144]) is None


def test_the_switches_name_bad_values_and_stay_off_without_a_gpu(monkeypatch):
    """MEGASTRIDE_BLOCKSPARSE_GLUON and ..._GLUON_DKDV_LAUNCHES: a bad value is named; on the CPU (no Hopper
    GPU) no part takes the Gluon path whatever the setting."""
    torch = pytest.importorskip("torch")
    from megastride.kernels import blocksparse as B
    from megastride.kernels import gluon_bwd
    from megastride.kernels import patterns as P

    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON", "yes")
    with pytest.raises(ValueError, match="MEGASTRIDE_BLOCKSPARSE_GLUON must be one of 0, 1, auto; got 'yes'"):
        B.gluon_setting()
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DKDV_LAUNCHES", "3")
    with pytest.raises(ValueError, match="GLUON_DKDV_LAUNCHES must be 1 or 2, got '3'"):
        gluon_bwd.dkdv_launches(128)
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_GLUON_DKDV_LAUNCHES")
    assert gluon_bwd.dkdv_launches(128) == 2 and gluon_bwd.dkdv_launches(64) == 1
    assert gluon_bwd.tiles("dkdv", 128) == gluon_bwd.DKDV_TILES[128] == (64, 64, 2, 4)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_TILES", "dkdv:128x64s3w8")
    assert gluon_bwd.tiles("dkdv", 64) == (128, 64, 3, 8) and gluon_bwd.tiles("dq", 64) == (64, 64, 3, 4)
    assert gluon_bwd.registers("dkdv", 64) is None and gluon_bwd.programs_per_sm("dkdv", 64) == 1
    assert gluon_bwd.programs_per_sm("dq", 64) == 2
    # a register cap: how many programs an SM holds (65,536 registers, 8 a thread at a time)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_TILES", "dkdv:64x32s4w4r168,dq:64x32s4w4r128")
    assert gluon_bwd.tiles("dkdv", 64) == (64, 32, 4, 4) and gluon_bwd.registers("dkdv", 128) == 168
    assert gluon_bwd.programs_per_sm("dkdv", 64) == 3 and gluon_bwd.programs_per_sm("dq", 64) == 4
    for bad in ("dkdv:64x64s3w8", "dq:64x48s2w4", "fwd:64x64s2w4", "dkdv:64x64s1w4", "dq:64x32s4w4r300",
                "dq:64x32s4w4r"):
        monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_TILES", bad)
        with pytest.raises(ValueError, match=f"GLUON_TILES: '{bad}' is not KERNEL:PxSsNwW"):
            gluon_bwd.tiles("dq", 64)
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_GLUON_TILES")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON", "1")
    layout = P.build_layout(P.same_for_all_heads(P.fixed(256, 64), 2), 1024, 128)
    q = torch.zeros(1, 2, 1024, 128, dtype=torch.bfloat16)
    assert not B.gluon_backward(B._part_meta(layout.parts[0], 1024, q.device), layout, q, q, q, q)


def test_column_segments_where_a_column_outweighs_a_share_of_the_work(monkeypatch):
    """``gluon_split`` on the fixed pattern at H=2 (132 SMs, two programs each): at 262,144 tokens the
    summary columns (2,017 query blocks) outweigh an even share of all columns' work per program slot
    (196,608 blocks x 2 key tiles / 264 = 1,489), so columns are cut into segments of a quarter of it (373);
    at 1M they do not (8,129 against 11,915): whole columns. Without an SM count (the interpreter) whole
    columns; the variable overrides, and a bad value is named."""
    pytest.importorskip("torch")
    from megastride.kernels import blocksparse as B
    from megastride.kernels import patterns as P

    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_GLUON_SPLIT", raising=False)
    lay = {n: P.build_layout(P.same_for_all_heads(P.fixed(l, 128), 2), n, 128)
           for n, l in ((262144, 4096), (1048576, 8192))}
    assert lay[262144].column_work() == (2017, 196608)
    assert B.gluon_split(lay[262144], 1, 132) == 373
    assert B.gluon_split(lay[1048576], 1, 132) == 0
    assert B.gluon_split(lay[262144], 1, None) == 0
    # one program an SM (eight warps) of 128 keys: the same work per slot, the same segments
    assert B.gluon_split(lay[262144], 1, 132, block_n=128, per_sm=1) == 373
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_SPLIT", "0")
    assert B.gluon_split(lay[262144], 1, 132) == 0
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_GLUON_SPLIT", "-2")
    with pytest.raises(ValueError, match="GLUON_SPLIT must be \"auto\" or an integer >= 0, got '-2'"):
        B.gluon_split(lay[262144], 1, 132)
