"""The forward as one loop over each program's flattened tiles (kernels/flat.py), under the Triton interpreter:
its output and the gradients made from its lse against the token-level reference, and its tile lists against
the layout's own pairs."""

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":  # as tests/test_kernels_triton.py: the interpreter only
    pytest.skip("the flat forward's interpreter tests: run them with TRITON_INTERPRET=1 in a session of their own "
                "on a GPU host", allow_module_level=True)

import torch  # noqa: E402

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the interpreter on numpy 2

from megastride.kernels import blocksparse, flat, reference_attention  # noqa: E402
from megastride.kernels import patterns as P  # noqa: E402
from test_kernels_triton import ATOL, _attention_and_grads, _inputs  # noqa: E402 - the interpreter tests' own helpers


# name -> (pattern, n, block, heads, head dim, dtype, batch)
CASES = {
    # one natural-order part; the window's diagonal blocks masked, the summary columns full
    "fixed_block128": (lambda h: P.fixed(128, 32), 512, 128, 2, 64, torch.float16, 1),
    # a natural part, then a stride-permuted part merging into it through the two lse (LOAD_PREV)
    "strided_permuted_straddling": (lambda h: P.strided(32), 256, 32, 2, 32, torch.float32, 1),
    # rows with no key at all: each gets one "none" tile, whose output is 0 and lse -inf
    "summary_only_empty_rows": (lambda h: P.summary(64, 16), 256, 32, 2, 32, torch.float32, 1),
    # several parts and CSRs of different heads in one launch, batch 2
    "multi_head_mix": (lambda h: P.multi_head([P.fixed(32, 8), P.strided(16), P.strided_half(32)], h),
                       256, 32, 3, 32, torch.float16, 2),
    # a summary-first part (runs of 8 positions across 32-position tiles)
    "fixed_summary_first_odd_window": (lambda h: P.fixed(48, 8), 384, 32, 2, 32, torch.float16, 1),
}


def _layout(case):
    make, n, block, heads, head_dim, dtype, batch = case
    pattern = P.same_for_all_heads(p, heads) if isinstance(p := make(heads), P.HeadPattern) else p
    return pattern, P.build_layout(pattern, n, block)


@pytest.mark.parametrize("programs", ["3", "1000"])
@pytest.mark.parametrize("name", list(CASES))
def test_flat_forward_and_the_gradients_from_its_lse_match_the_reference(name, programs, monkeypatch):
    """With the flat forward on, the output and dq, dk, dv (the backward reads the flat forward's lse) equal the
    reference within the three-way tolerance; 3 programs walk many query tiles each, 1,000 one or none."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_FLAT", "1")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_FLAT_PROGRAMS", programs)
    monkeypatch.setattr(blocksparse, "POISON", True)  # every output element must be written
    case = CASES[name]
    _, n, block, heads, head_dim, dtype, batch = case
    pattern, layout = _layout(case)
    q, k, v, do = _inputs(batch, heads, n, head_dim, dtype, 0)
    got = _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout), q, k, v, do)
    chosen = flat.choices(layout)
    assert len(chosen) == len(layout.parts) and "default" not in chosen, chosen
    low = _attention_and_grads(lambda *x: reference_attention(*x, layout), q, k, v, do)
    exact = _attention_and_grads(lambda *x: reference_attention(*x, layout), *(t.double() for t in (q, k, v, do)))
    for what, g, lo, ex in zip(["out", "dq", "dk", "dv"], got, low, exact):
        assert torch.isfinite(g).all(), f"{name}: {what} has unwritten elements"
        err = (g.double() - ex).abs()
        bound = 2 * (lo.double() - ex).abs() + ATOL[dtype] * max(1.0, ex.abs().max().item())
        assert (err <= bound).all(), f"{name}: {what} off by {(err - bound).max():.3g} over its bound"


def _decode(lists):
    """Per program: [(query word, key word, bh)] in walking order."""
    ptr = lists["PROG_PTR"].tolist()
    words = [lists[name].tolist() for name in ("TILE_ITEM", "TILE_STEP", "TILE_BH")]
    return [list(zip(*(w[ptr[p]:ptr[p + 1]] for w in words))) for p in range(len(ptr) - 1)]


@pytest.mark.parametrize("side", ["row", "col"])
@pytest.mark.parametrize("name,block_m,block_n,programs", [("multi_head_mix", 32, 16, 5), ("fixed_block128", 64, 32, 3),
                                                          ("summary_only_empty_rows", 16, 32, 4)])
def test_flat_lists_hold_each_item_once_and_cover_its_allowed_pairs(name, block_m, block_n, programs, side):
    """Each item ((batch x part head, query tile) on the row side, its key tile on the column side) is one run of
    tiles in one program, flagged first at its start and last at its end; a run holds no step tile twice; every
    allowed pair of the item lies in one of its tiles, unmasked tiles hold allowed pairs only, and an item without
    pairs has one ``none`` tile; the programs' loads differ by at most the largest item's."""
    case = CASES[name]
    _, n, block, heads, _, _, batch = case
    _, layout = _layout(case)
    item_tile, step_tile = (block_m, block_n) if side == "row" else (block_n, block_m)
    for part in layout.parts:
        meta = blocksparse._part_meta(part, n, torch.device("cpu"))
        lists = flat.flat_lists(meta, n, batch, block, block_m, block_n, programs, "cpu", side)
        seen, loads, biggest = set(), [], 0
        for tiles in _decode(lists):
            loads.append(len(tiles))
            runs = []
            for iw, sw, bh in tiles:
                if iw & flat.FIRST:
                    assert not runs or runs[-1][2], "an item started before the last one ended"
                    runs.append([(iw >> 2, bh), [], False])
                else:
                    assert runs and runs[-1][0] == (iw >> 2, bh) and not runs[-1][2], "a tile continues no item"
                runs[-1][1].append(sw)
                runs[-1][2] = bool(iw & flat.LAST)
            assert not runs or runs[-1][2], "a program's last item not flagged last"
            for (first, bh), steps, _ in runs:
                assert (first, bh) not in seen, "an item walked twice"
                seen.add((first, bh))
                biggest = max(biggest, len(steps))
                assert len(set(w >> 2 for w in steps)) == len(steps), "a step tile twice in one item"
                hp = bh % len(part.heads)
                mine = torch.arange(first, first + item_tile)
                other = torch.arange(n)
                allowed = (part.allows(hp, mine[:, None], other[None, :]) if side == "row"
                           else part.allows(hp, other[None, :], mine[:, None]))  # (item positions, others)
                covered = torch.zeros_like(allowed)
                for sw in steps:
                    if sw & flat.NONE:
                        assert len(steps) == 1 and not allowed.any(), "a none tile beside pairs"
                        continue
                    span = slice(sw >> 2, (sw >> 2) + step_tile)
                    if not sw & flat.MASKED:
                        assert allowed[:, span].all(), "an unmasked tile with a pair the part does not allow"
                    covered[:, span] = True
                assert not (allowed & ~covered).any(), "an allowed pair in no tile of its item"
        assert seen == {(i * item_tile, bh) for i in range(n // item_tile) for bh in range(batch * len(part.heads))}
        assert max(loads) - min(loads) <= biggest + 1


def test_flat_auto_keeps_the_default_forward_where_nothing_can_be_timed(monkeypatch):
    """"auto" times the flat forward against the default one on a GPU; here (the interpreter) it launches the
    default forward and remembers nothing, so a later call on a GPU still times."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_FLAT", "auto")
    case = CASES["fixed_block128"]
    _, n, block, heads, head_dim, dtype, batch = case
    _, layout = _layout(case)
    q, k, v, _ = _inputs(batch, heads, n, head_dim, dtype, 0)
    launched = []
    monkeypatch.setattr(flat, "_launch_fwd", lambda *a: launched.append(a))
    out = blocksparse.blocksparse_attention(q, k, v, layout)
    assert not launched and flat.choices(layout) == []
    torch.testing.assert_close(out.double(), reference_attention(*(t.double() for t in (q, k, v)), layout),
                               atol=2e-3, rtol=0)


@pytest.mark.parametrize("variable,value,words", [
    ("MEGASTRIDE_BLOCKSPARSE_FLAT", "yes", "MEGASTRIDE_BLOCKSPARSE_FLAT must be one of"),
    ("MEGASTRIDE_BLOCKSPARSE_FLAT_TILES", "128x64", "must look like 128x64w4s3p2"),
    ("MEGASTRIDE_BLOCKSPARSE_FLAT_TILES", "256x64w4s3p1", "tiles must be 16 to the layout's block 128"),
    ("MEGASTRIDE_BLOCKSPARSE_FLAT_PROGRAMS", "0", "MEGASTRIDE_BLOCKSPARSE_FLAT_PROGRAMS must be an integer >= 1"),
    ("MEGASTRIDE_BLOCKSPARSE_FLAT_DQ", "auto", "MEGASTRIDE_BLOCKSPARSE_FLAT_DQ must be 0 or 1"),
    ("MEGASTRIDE_BLOCKSPARSE_FLAT_DQ_TILES", "64x64w4", "MEGASTRIDE_BLOCKSPARSE_FLAT_DQ_TILES must look like"),
    ("MEGASTRIDE_BLOCKSPARSE_FLAT_DKDV", "yes", "MEGASTRIDE_BLOCKSPARSE_FLAT_DKDV must be 0 or 1"),
    ("MEGASTRIDE_BLOCKSPARSE_FLAT_SEGMENT", "-1", "MEGASTRIDE_BLOCKSPARSE_FLAT_SEGMENT must be \"auto\" or an integer"),
])
def test_flat_settings_reject_bad_values_in_one_line(variable, value, words, monkeypatch):
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_FLAT", "1")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_FLAT_DQ", "1")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_FLAT_DKDV", "1")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "separate")
    monkeypatch.setenv(variable, value)
    case = CASES["fixed_block128"]
    _, n, block, heads, head_dim, dtype, batch = case
    _, layout = _layout(case)
    q, k, v, do = _inputs(batch, heads, n, head_dim, dtype, 0)
    with pytest.raises(ValueError, match=words) as err:
        _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout), q, k, v, do)
    assert "\n" not in str(err.value)


def test_flat_lists_past_the_cap_leave_the_default_forward(monkeypatch):
    """Lists longer than FLAT_MAX_TILES are not built: the part runs the default forward, still exact."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_FLAT", "1")
    monkeypatch.setattr(flat, "FLAT_MAX_TILES", 4)
    case = CASES["fixed_block128"]
    _, n, block, heads, head_dim, dtype, batch = case
    _, layout = _layout(case)
    q, k, v, _ = _inputs(batch, heads, n, head_dim, dtype, 0)
    out = blocksparse.blocksparse_attention(q, k, v, layout)
    assert flat.choices(layout) == ["default"] * len(layout.parts)
    torch.testing.assert_close(out.double(), reference_attention(*(t.double() for t in (q, k, v)), layout),
                               atol=2e-3, rtol=0)


def test_a_row_after_one_of_much_larger_scores_starts_its_own_softmax(monkeypatch):
    """One program walks every query tile; tiles alternate between scores about 100 times apart (fp32), so a row
    that kept the previous row's running max would lose its exponentials to underflow."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_FLAT", "1")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_FLAT_PROGRAMS", "1")
    n, block, heads, head_dim = 256, 32, 1, 32
    layout = P.build_layout(P.same_for_all_heads(P.local(48), heads), n, block)
    q, k, v, _ = _inputs(1, heads, n, head_dim, torch.float32, 0)
    q = q * torch.where((torch.arange(n) // (block // 2)) % 2 == 0, 300.0, 1.0)[:, None]
    out = blocksparse.blocksparse_attention(q, k, v, layout)
    assert flat.choices(layout) == ["16x16w4s1p1"]
    torch.testing.assert_close(out.double(), reference_attention(*(t.double() for t in (q, k, v)), layout),
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("delta_here", ["1", "0"])
@pytest.mark.parametrize("name", ["fixed_block128", "strided_permuted_straddling", "multi_head_mix",
                                  "summary_only_empty_rows"])
def test_flat_dq_matches_the_reference(name, delta_here, monkeypatch):
    """The separate dQ kernel as flattened tiles (``MEGASTRIDE_BLOCKSPARSE_FLAT_DQ=1``, 3 programs), delta computed in
    it from the output and written for the default dK/dV kernel (``MEGASTRIDE_BLOCKSPARSE_DELTA_IN_DQ=1``: no delta
    kernel) or read from the delta kernel ("0"): dq within the three-way tolerance, merging parts adding into the
    earlier parts' sums, and dk and dv too (their delta read from what the flat dQ wrote, NaN where it wrote none)."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_FLAT_DQ", "1")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "separate")
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DELTA_IN_DQ", delta_here)
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_FLAT_PROGRAMS", "3")
    monkeypatch.setattr(blocksparse, "POISON", True)  # delta too starts as NaN
    launched = []
    prep = blocksparse._bwd_prep
    monkeypatch.setattr(blocksparse, "_bwd_prep", lambda *a: (launched.append("delta"), prep(*a))[1])
    case = CASES[name]
    _, n, block, heads, head_dim, dtype, batch = case
    _, layout = _layout(case)
    q, k, v, do = _inputs(batch, heads, n, head_dim, dtype, 0)
    got = _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout), q, k, v, do)
    assert len(flat.choices(layout, "dq")) == len(layout.parts)
    assert launched == ([] if delta_here == "1" else ["delta"])
    low = _attention_and_grads(lambda *x: reference_attention(*x, layout), q, k, v, do)
    exact = _attention_and_grads(lambda *x: reference_attention(*x, layout), *(t.double() for t in (q, k, v, do)))
    for what, g, lo, ex in list(zip(["out", "dq", "dk", "dv"], got, low, exact))[1:]:
        err = (g.double() - ex).abs()
        bound = 2 * (lo.double() - ex).abs() + ATOL[dtype] * max(1.0, ex.abs().max().item())
        assert torch.isfinite(g).all() and (err <= bound).all(), f"{name}: {what} off by {(err - bound).max():.3g}"


@pytest.mark.parametrize("fastest", ["16x16w4s1p1", "default"])
def test_flat_auto_keeps_what_timed_fastest_and_times_on_copies(fastest, monkeypatch):
    """"auto" (timing faked: each launch's time from a table) launches each flat config and the default forward on
    copies of the outputs, keeps the fastest, and the call's own output is still exact: the merging part's timed
    launches did not fold into the real lse and output twice."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_FLAT", "auto")
    monkeypatch.setattr(flat, "candidates", lambda block, head_dim, kind="fwd": [(16, 16, 4, 1, 1), (32, 32, 4, 1, 1)])
    seconds = {"16x16w4s1p1": 2e-3, "32x32w4s1p1": 3e-3, "default": 4e-3}
    seconds[fastest] = 1e-3
    last = []
    launch_fwd, launch_default = flat._launch_fwd, blocksparse._fwd_part_launch
    monkeypatch.setattr(flat, "_launch_fwd", lambda *a: (last.append(flat.tile_name(a[-2])), launch_fwd(*a)))
    monkeypatch.setattr(blocksparse, "_fwd_part_launch", lambda *a, **kw: (last.append("default"),
                                                                          launch_default(*a, **kw)))
    monkeypatch.setattr(blocksparse, "_timing_possible", lambda q: True)
    monkeypatch.setattr(blocksparse, "_cuda_seconds", lambda run: (run(), seconds[last[-1]])[1])
    case = CASES["strided_permuted_straddling"]
    _, n, block, heads, head_dim, dtype, batch = case
    _, layout = _layout(case)
    q, k, v, _ = _inputs(batch, heads, n, head_dim, dtype, 0)
    out = blocksparse.blocksparse_attention(q, k, v, layout)
    chosen = flat.choices(layout)
    assert len(chosen) == 2 and all(c.startswith(fastest + " (timed ") for c in chosen), chosen
    assert last.count("default") == 2 * (1 + flat.CHOOSE_REPEATS) + (fastest == "default") * 2
    torch.testing.assert_close(out.double(), reference_attention(*(t.double() for t in (q, k, v)), layout),
                               atol=1e-5, rtol=0)


def test_flat_lists_count_the_full_blocks_tiles_before_building_anything(monkeypatch):
    """Where the full blocks' tiles alone pass FLAT_MAX_TILES the lists are refused before the CSRs are copied to
    the host (at 1M tokens that copy and the lists would be hundreds of MB); just under the cap they are built."""
    case = CASES["fixed_block128"]
    _, n, block, heads, _, _, batch = case
    _, layout = _layout(case)
    meta = blocksparse._part_meta(layout.parts[0], n, torch.device("cpu"))
    full = int(meta.lists["row_full_ptr"][-1] - meta.lists["row_full_ptr"][0]) * len(layout.parts[0].heads)
    monkeypatch.setattr(flat, "_lists_cpu", lambda meta, side: pytest.fail("copied the lists past the cap"))
    monkeypatch.setattr(flat, "FLAT_MAX_TILES", full * 4 - 1)  # 64x64 tiles of 128-blocks: 4 a full block
    assert flat.flat_lists(meta, n, batch, block, 64, 64, 3, "cpu") is None
    monkeypatch.undo()
    monkeypatch.setattr(flat, "FLAT_MAX_TILES", 10 ** 6)
    lists = flat.flat_lists(meta, n, batch, block, 64, 64, 4, "cpu")  # another key: the refusal is remembered
    assert lists["PROG_PTR"][-1].item() >= full * 4


# (name, segment, whether key tiles are cut: None where "auto" may go either way)
@pytest.mark.parametrize("name,segment,cuts", [
    ("fixed_block128", "auto", True),  # the summary columns: every later window's rows
    ("strided_permuted_straddling", "auto", None), ("multi_head_mix", "auto", None),
    ("summary_only_empty_rows", "auto", True), ("fixed_summary_first_odd_window", "auto", None),
    ("fixed_block128", "0", False), ("multi_head_mix", "1", True), ("strided_permuted_straddling", "2", True)])
def test_flat_dkdv_matches_the_reference_twice(name, segment, cuts, monkeypatch):
    """dK/dV as flattened key tiles (``MEGASTRIDE_BLOCKSPARSE_FLAT_DKDV=1``, 16 programs), with the flat dQ: key tiles
    whole ("0"), or long ones cut into pieces of a fair share ("auto") or of 1 or 2 tiles, added up from a workspace:
    all three gradients within the three-way tolerance, merging parts adding into the earlier parts' sums, key tiles
    no query attends written as zeros; a second call bitwise the same (the pieces' sums added in one order)."""
    # 16 programs: a fair share small enough that "auto" cuts the long columns
    for variable, value in (("FLAT_DKDV", "1"), ("FLAT_DQ", "1"), ("DQ", "separate"), ("FLAT_PROGRAMS", "16"),
                            ("FLAT_SEGMENT", segment)):
        monkeypatch.setenv(f"MEGASTRIDE_BLOCKSPARSE_{variable}", value)
    monkeypatch.setattr(blocksparse, "POISON", True)
    case = CASES[name]
    _, n, block, heads, head_dim, dtype, batch = case
    _, layout = _layout(case)
    q, k, v, do = _inputs(batch, heads, n, head_dim, dtype, 0)
    low = _attention_and_grads(lambda *x: reference_attention(*x, layout), q, k, v, do)
    exact = _attention_and_grads(lambda *x: reference_attention(*x, layout), *(t.double() for t in (q, k, v, do)))
    cut, first = 0, None
    for _ in range(2):
        got = _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout), q, k, v, do)
        assert len(flat.choices(layout, "dkdv")) == len(layout.parts)
        for what, g, lo, ex in list(zip(["out", "dq", "dk", "dv"], got, low, exact))[1:]:
            err = (g.double() - ex).abs()
            bound = 2 * (lo.double() - ex).abs() + ATOL[dtype] * max(1.0, ex.abs().max().item())
            assert torch.isfinite(g).all() and (err <= bound).all(), f"{name}: {what} off by {(err - bound).max():.3g}"
        if first is None:
            first = got
        else:  # no atomics: the pieces' sums are added in one order
            assert all(torch.equal(a, b) for a, b in zip(first, got)), "two calls differ"
    for part in layout.parts:
        meta = blocksparse._part_meta(part, n, torch.device("cpu"))
        cut += sum(lists["UNIT_SLOT"].numel() for key, lists in meta.extra.items()
                   if key[0] == "flat" and key[1] == "col" and lists)
    assert cuts is None or (cut > 0) == cuts, cut


def test_the_flat_dq_mode_runs_both_backward_kernels_flat(monkeypatch):
    """``MEGASTRIDE_BLOCKSPARSE_DQ=flat``: the separate backward with the flat dQ and dK/dV (as their two switches
    would), the gradients within the three-way tolerance; "auto" can take it once it is in ``AUTO_MODES``."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "flat")
    case = CASES["multi_head_mix"]
    _, n, block, heads, head_dim, dtype, batch = case
    _, layout = _layout(case)
    q, k, v, do = _inputs(batch, heads, n, head_dim, dtype, 0)
    got = _attention_and_grads(lambda *x: blocksparse.blocksparse_attention(*x, layout), q, k, v, do)
    assert len(flat.choices(layout, "dq")) == len(flat.choices(layout, "dkdv")) == len(layout.parts)
    assert flat.choices(layout) == []  # the forward keeps its own switch
    low = _attention_and_grads(lambda *x: reference_attention(*x, layout), q, k, v, do)
    exact = _attention_and_grads(lambda *x: reference_attention(*x, layout), *(t.double() for t in (q, k, v, do)))
    for what, g, lo, ex in list(zip(["out", "dq", "dk", "dv"], got, low, exact))[1:]:
        err = (g.double() - ex).abs()
        bound = 2 * (lo.double() - ex).abs() + ATOL[dtype] * max(1.0, ex.abs().max().item())
        assert (err <= bound).all(), f"{what} off by {(err - bound).max():.3g}"
