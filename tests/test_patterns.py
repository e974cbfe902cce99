"""Patterns against the paper's formulas (section 4), written here independently of the code."""

import itertools
import warnings

import numpy as np
import pytest
import torch

from megastride.kernels import patterns as P

# --- the paper's definitions, in plain numpy loops over (i, j) --------------------------------


def paper_mask(kind: str, n: int, l: int = 0, c: int = 0, slot: int = 0) -> np.ndarray:
    """Dense (n, n) mask straight from SPEC.md section 1; causal j <= i always."""
    m = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for j in range(i + 1):
            if kind == "dense":
                ok = True
            elif kind == "local":
                ok = i - l + 1 <= j <= i
            elif kind == "strided":  # local + strided halves
                ok = (i - l + 1 <= j <= i) or (i - j) % l == 0
            elif kind == "stride_only":
                ok = (i - j) % l == 0
            elif kind == "fixed":  # A1 own window, A2 summary slot of every window
                own = j // l == i // l
                lo, hi = l - (slot + 1) * c, l - slot * c
                ok = own or lo <= j % l < hi
            else:
                raise AssertionError(kind)
            m[i, j] = ok
    return m


def build(pattern, n, block, heads=1):
    return P.build_layout(pattern, n, block, num_heads=heads)


CASES = [(n, b) for n, b in [(64, 8), (96, 16), (128, 16), (192, 32), (256, 64)]]
STRIDES = [4, 8, 12, 16, 32]


@pytest.mark.parametrize("n,block", CASES)
@pytest.mark.parametrize("l", STRIDES)
def test_strided_and_local_match_paper(n, block, l):
    """local, strided and the strided half alone equal the paper's definitions, token by token."""
    for kind, pat in [("local", P.local(l)), ("strided", P.strided(l)), ("stride_only", P.strided_half(l))]:
        want = torch.from_numpy(paper_mask(kind, n, l))
        assert torch.equal(pat.allows(torch.arange(n)[:, None], torch.arange(n)[None, :]), want), kind
        assert torch.equal(build(pat, n, block).to_dense_mask()[0], want), (kind, "compressed layout")


@pytest.mark.parametrize("n,block", CASES)
@pytest.mark.parametrize("l,c", [(8, 2), (12, 4), (16, 4), (16, 8), (32, 8), (32, 32)])
def test_fixed_matches_paper(n, block, l, c):
    """fixed(l, c) = own window (A1) union the last c positions of every window (A2)."""
    want = torch.from_numpy(paper_mask("fixed", n, l, c))
    assert torch.equal(P.fixed(l, c).allows(torch.arange(n)[:, None], torch.arange(n)[None, :]), want)
    assert torch.equal(build(P.fixed(l, c), n, block).to_dense_mask()[0], want)


def test_dense_is_causal_lower_triangle():
    """dense = every j <= i, and its layout lists every lower-triangular block."""
    lay = build(P.dense(), 128, 16)
    assert torch.equal(lay.to_dense_mask()[0], torch.from_numpy(paper_mask("dense", 128)))
    assert lay.parts[0].csr[0].nnz == 8 * 9 // 2


def test_fixed_per_head_summary_slots():
    """The reference code's variant: head h reads summary slot h % k of every window."""
    n, l, c, heads, k = 128, 32, 8, 6, 3
    lay = P.build_layout(P.fixed_per_head(l, c, heads, k), n, 16)
    got = lay.to_dense_mask()
    for h in range(heads):
        assert torch.equal(got[h], torch.from_numpy(paper_mask("fixed", n, l, c, slot=h % k))), h
    assert not torch.equal(got[0], got[1])


def test_merged_is_union_and_multi_head_assigns_round_robin():
    """merged = union of the patterns' masks; multi-head gives head h pattern h % p."""
    n = 128
    fixed, strided = paper_mask("fixed", n, 16, 4), paper_mask("strided", n, 16)
    lay = P.build_layout(P.same_for_all_heads(P.merged(P.fixed(16, 4), P.strided(16)), 2), n, 16)
    assert torch.equal(lay.to_dense_mask()[1], torch.from_numpy(fixed | strided))
    lay = P.build_layout(P.multi_head([P.fixed(16, 4), P.strided(16), P.local(16)], 5), n, 16)
    want = [fixed, strided, paper_mask("local", n, 16)]
    for h, m in enumerate(lay.to_dense_mask()):
        assert torch.equal(m, torch.from_numpy(want[h % 3])), h


@pytest.mark.parametrize("n,block,l", [(256, 16, 16), (256, 32, 8), (192, 16, 12)])
def test_strided_half_runs_permuted_without_double_counting(n, block, l):
    """The strided half goes to a permuted part and never repeats a key the local half holds."""
    lay = build(P.strided(l), n, block)
    assert [p.permute_stride for p in lay.parts] == [None, l]
    natural, permuted = lay.parts
    pos = torch.arange(n)
    perm = permuted.permutation(n)
    local_mask = natural.allows(0, pos[:, None], pos[None, :]) & (pos[None, :] <= pos[:, None])
    perm_mask = torch.zeros(n, n, dtype=torch.bool)
    perm_mask[perm[:, None], perm[None, :]] = permuted.allows(0, pos[:, None], pos[None, :])
    assert not (local_mask & perm_mask).any()
    assert torch.equal(local_mask | perm_mask, torch.from_numpy(paper_mask("strided", n, l)))


def test_block_lists_are_exact():
    """Every listed block has an allowed pair, every full block is entirely allowed, none is missing."""
    n, block = 256, 16
    pattern = P.multi_head([P.fixed(24, 8), P.strided(16), P.summary(32, 8), P.local(40)], 4)
    lay = P.build_layout(pattern, n, block)
    for part in lay.parts:
        for h in range(len(part.heads)):
            csr = part.csr[part.head_csr[h]]
            pos = torch.arange(n)
            truth = part.allows(h, pos[:, None], pos[None, :]).view(n // block, block, n // block, block)
            any_, all_ = truth.any(3).any(1), truth.all(3).all(1)  # (nb, nb)
            rows = P._rows_of(csr.row_full_ptr)
            listed_full = torch.zeros_like(any_)
            listed_full[rows.long(), csr.row_full_idx.long()] = True
            rows = P._rows_of(csr.row_part_ptr)
            listed_part = torch.zeros_like(any_)
            listed_part[rows.long(), csr.row_part_idx.long()] = True
            assert torch.equal(listed_full | listed_part, any_)
            assert not (listed_full & ~all_).any()
            assert not (listed_full & listed_part).any()


@pytest.mark.parametrize("n,block,l,c", [(512, 32, 64, 16), (384, 32, 48, 8), (256, 16, 32, 8), (3072, 64, 96, 16)])
def test_fixed_summaries_off_block_boundaries_go_to_a_summary_first_part(n, block, l, c):
    """The paper's fixed(l, c) whose summary columns are not whole blocks: the windows stay in natural order and
    the earlier windows' summaries go to a summary-first part, where they are contiguous. Together they give
    the paper's mask exactly, each key once; the part's lists are exact; and it walks far fewer blocks than the
    natural-order layout of the same pattern, which touches nearly every earlier block."""
    lay = build(P.fixed(l, c), n, block)
    assert [(p.permute_stride, p.summary_first) for p in lay.parts] == [(None, None), (None, (l, c))]
    natural, first = lay.parts
    assert natural.components == ((P.Window(l),),)
    assert first.components == ((P.EarlierSummaries(c, l - c, c * n // l),),)
    perm = first.permutation(n)
    assert torch.equal(perm.sort().values, torch.arange(n))
    assert ((perm[: c * n // l] % l) >= l - c).all() and ((perm[c * n // l:] % l) < l - c).all()
    pos = torch.arange(n)
    window = natural.allows(0, pos[:, None], pos[None, :]) & (pos[None, :] <= pos[:, None])
    summaries = torch.zeros(n, n, dtype=torch.bool)
    summaries[perm[:, None], perm[None, :]] = first.allows(0, pos[:, None], pos[None, :])
    assert not (window & summaries).any()
    assert torch.equal(window | summaries, torch.from_numpy(paper_mask("fixed", n, l, c)))
    assert torch.equal(lay.to_dense_mask()[0], torch.from_numpy(paper_mask("fixed", n, l, c)))
    csr = first.csr[0]
    truth = first.allows(0, pos[:, None], pos[None, :]).view(n // block, block, n // block, block)
    any_, all_ = truth.any(3).any(1), truth.all(3).all(1)
    listed = {}
    for kind in ("full", "part"):
        listed[kind] = torch.zeros_like(any_)
        listed[kind][P._rows_of(getattr(csr, f"row_{kind}_ptr")).long(), getattr(csr, f"row_{kind}_idx").long()] = True
    assert torch.equal(listed["full"] | listed["part"], any_)
    assert torch.equal(listed["full"], all_)  # every wholly allowed block is walked without a mask
    natural_only = P._block_csr((P.Window(l), P.Summary(l, c)), 0, n, block, "cpu").nnz
    assert natural.csr[0].nnz + csr.nnz < natural_only


@pytest.mark.parametrize("pattern,n,block,why", [
    (P.fixed(64, 32), 256, 32, "summary columns are whole blocks"),
    (P.fixed(64, 16), 192, 64, "the summaries (48) are not whole blocks"),
    (P.fixed(48, 8), 256, 16, "n is not a multiple of l"),
    (P.fixed(64, 16, 1), 256, 32, "another summary slot than the paper's"),
    (P.merged(P.fixed(64, 16), P.strided(32)), 256, 32, "more than the two fixed components"),
])
def test_fixed_summaries_stay_in_natural_order_otherwise(pattern, n, block, why):
    """Summaries that are whole blocks (or cannot be gathered into whole blocks) keep the natural-order part."""
    lay = build(pattern, n, block)
    assert not any(p.summary_first for p in lay.parts), why
    assert torch.equal(lay.to_dense_mask()[0], pattern.allows(torch.arange(n)[:, None], torch.arange(n)[None, :])), why


def test_summary_first_switch_restores_the_natural_layout_and_rejects_other_values(monkeypatch):
    """MEGASTRIDE_SUMMARY_FIRST=0 builds the one-part natural layout (same mask); another value is one line."""
    monkeypatch.setenv("MEGASTRIDE_SUMMARY_FIRST", "0")
    lay = build(P.fixed(64, 16), 256, 32)
    assert [p.summary_first for p in lay.parts] == [None]
    assert torch.equal(lay.to_dense_mask()[0], torch.from_numpy(paper_mask("fixed", 256, 64, 16)))
    monkeypatch.setenv("MEGASTRIDE_SUMMARY_FIRST", "yes")
    with pytest.raises(ValueError, match="MEGASTRIDE_SUMMARY_FIRST must be 0 or 1, got 'yes'"):
        build(P.fixed(64, 16), 256, 32)


def test_paper_enwik8_fixed_pattern_walks_a_quarter_of_the_blocks():
    """fixed(128, 32) at 12,288 tokens in 128-blocks (the paper's Enwik8 model): 96 window blocks and 1,200
    summary blocks per head (all full but the last of each row) instead of every one of the 4,656 causal blocks,
    and the same pairs as the closed form."""
    lay = build(P.fixed(128, 32), 12288, 128)
    natural, first = lay.parts
    assert natural.csr[0].nnz == 96 and first.csr[0].nnz == 1200
    assert first.csr[0].row_part_idx.numel() <= 96
    assert P._block_csr((P.Window(128), P.Summary(128, 32)), 0, 12288, 128, "cpu").nnz == 96 * 97 // 2
    assert lay.count_pairs(0) == P.closed_form_pairs(P.fixed(128, 32), 12288)


def test_transposed_lists_match_rows():
    """The column lists (for dK/dV) are the exact transpose of the row lists."""
    lay = P.build_layout(P.fixed(32, 8), 256, 16, num_heads=1)
    csr = lay.parts[0].csr[0]
    for kind in ("full", "part"):
        rp, ri = getattr(csr, f"row_{kind}_ptr"), getattr(csr, f"row_{kind}_idx")
        cp, ci = getattr(csr, f"col_{kind}_ptr"), getattr(csr, f"col_{kind}_idx")
        by_row = set(zip(P._rows_of(rp).tolist(), ri.tolist()))
        by_col = set(zip(ci.tolist(), P._rows_of(cp).tolist()))
        assert by_row == by_col


def test_layout_memory_is_proportional_to_nonzero_blocks():
    """Metadata grows with the non-zero blocks, far below a dense (nb, nb) layout at 1M tokens."""
    n, block = 2**20, 128
    lay = P.build_layout(P.fixed(P.optimal_stride(n, "fixed", 128), 128), n, block, num_heads=8)
    nnz = lay.parts[0].csr[0].nnz
    assert lay.nbytes <= 2 * 4 * nnz + 4 * 4 * (n // block + 1)  # two int32 indices per block + four pointer arrays
    assert lay.nbytes < 16 * 2**20
    assert len(lay.parts[0].csr) == 1  # identical heads share one structure


def test_density_of_fixed_pattern_at_long_lengths():
    """Density vs causal falls like the paper's O(sqrt n) cost (SPEC table: 0.234 at 8K, 0.062 at 128K)."""
    got = {}
    for n in (8192, 131072):
        l = P.optimal_stride(n, "fixed", 128)
        lay = P.build_layout(P.fixed(l, 128), n, 128)
        nb = n // 128
        got[n] = lay.parts[0].csr[0].nnz / (nb * (nb + 1) / 2)
    assert got[8192] == pytest.approx(0.234, abs=0.03)
    assert got[131072] == pytest.approx(0.062, abs=0.01)


def test_count_pairs_matches_dense_mask():
    """count_pairs (block-wise) equals the number of True entries of the token mask."""
    pattern = P.multi_head([P.fixed(16, 4), P.strided(16)], 2)
    lay = P.build_layout(pattern, 128, 16)
    dense = pattern.to_dense_mask(128)
    assert [lay.count_pairs(h) for h in range(2)] == [int(dense[h].sum()) for h in range(2)]


@pytest.mark.parametrize("n,block,msg", [(100, 16, "not divisible"), (0, 16, "positive")])
def test_bad_lengths_raise_clear_errors(n, block, msg):
    """Lengths not divisible by the block (or empty) are rejected with a message naming them."""
    with pytest.raises(ValueError, match=msg):
        P.build_layout(P.dense(), n, block)


def test_bad_parameters_raise_clear_errors():
    """Zero strides and summary slots that do not fit the window are rejected by name."""
    with pytest.raises(ValueError, match="must be positive"):
        P.build_layout(P.local(0), 64, 16)
    with pytest.raises(ValueError, match="does not fit"):
        P.build_layout(P.fixed(16, 8, index=2), 64, 16)


def test_optimal_stride_follows_paper():
    """l ~ sqrt(n) for strided and sqrt(c n) for fixed, a block multiple dividing n."""
    assert P.optimal_stride(2**16, "strided", block=64) == 256
    assert P.optimal_stride(2**17, "fixed", 128, 128) == 4096
    for n, kind in itertools.product([12288, 65536, 2**20], ["fixed", "strided"]):
        l = P.optimal_stride(n, kind, 128, 128)
        assert n % l == 0 and l % 128 == 0


@pytest.mark.parametrize("n,block,l", [(256, 16, 24), (256, 16, 40), (512, 32, 100), (640, 64, 130)])
def test_strides_not_dividing_n_list_exactly_the_blocks_they_touch(n, block, l):
    """Where n is not a multiple of l the strided half stays in natural order; its block lists (built from
    per-shift intervals, not every earlier block) still hold exactly the touched blocks, against the paper's
    mask, for the merged strided head and for the stride alone."""
    for kind, pattern in (("strided", P.strided(l)), ("stride_only", P.HeadPattern((P.Stride(l),), name="s"))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the warning itself: the next test
            lay = P.build_layout(pattern, n, block)
        assert [part.permute_stride for part in lay.parts] == [None]
        truth = torch.from_numpy(paper_mask(kind, n, l)).view(n // block, block, n // block, block)
        csr = lay.parts[0].csr[0]
        listed = torch.zeros(n // block, n // block, dtype=torch.bool)
        for ptr, idx in ((csr.row_full_ptr, csr.row_full_idx), (csr.row_part_ptr, csr.row_part_idx)):
            listed[P._rows_of(ptr).long(), idx.long()] = True
        assert torch.equal(listed, truth.any(3).any(1)), kind


def test_a_stride_not_dividing_n_warns_once_naming_dividing_strides():
    P._WARNED.discard((1000, 48, 8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        P.build_layout(P.strided(48), 1000, 8)
        P.build_layout(P.strided(48), 1000, 8)
        P.build_layout(P.strided(40), 1000, 8)  # divides 1000: permuted, no warning
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "1000 tokens are not a multiple of the stride 48" in messages[0]
    assert "(40 or 50)" in messages[0]
    assert P.dividing_strides(8388608, 2896) == (2048, 4096)


def test_unpermuted_stride_layouts_grow_with_their_touched_blocks_not_nb_squared():
    """A 1M-token strided(1000) layout (not permutable: 2^20 is not a multiple of 1000) lists about two
    key blocks per row and shift, nb * n / l of them, far below the nb^2 / 2 of every earlier block."""
    n, block, l = 2**20, 128, 1000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lay = P.build_layout(P.strided(l), n, block)
    nb = n // block
    nnz = lay.parts[0].csr[0].nnz
    assert nb * n / l / 2 < nnz < 2.1 * nb * n / l / 2 + nb * (l // block + 2)
    assert nnz < nb * nb / 2 / 3



def test_layouts_past_the_build_limits_are_refused_before_their_tensors(monkeypatch):
    """A layout's construction holds int64 tensors of its block rows and of one part's candidate blocks: past
    MAX_BLOCK_ROWS or MAX_CANDIDATES build_layout says so in one line, naming the pattern and the length,
    instead of allocating (`megastride plan --seq-len 64000000000` was killed for memory on a 24 GB host)."""
    head = P.fixed(64, 16)
    rows = (P.MAX_BLOCK_ROWS + 1) * 16
    with pytest.raises(P.LayoutTooLarge, match=f"sequence length {rows:,} in 16-token blocks is "
                                               f"{P.MAX_BLOCK_ROWS + 1:,} block rows, more than the"):
        P.build_layout(head, rows, 16)
    # the paper's fixed(128,32) is quadratic (a summary-first part): its candidates outgrow a lowered limit
    enwik8 = P.fixed(128, 32)
    blocks = P.build_layout(enwik8, 12288, 128).parts[-1]
    monkeypatch.setattr(P, "MAX_CANDIDATES", 1000)
    with pytest.raises(P.LayoutTooLarge) as err:
        P.build_layout(enwik8, 12288, 128)
    message = str(err.value)
    assert message.startswith("fixed(128,32) at 12,288 tokens in 128-token blocks: its layout would take ")
    assert message.endswith("candidate blocks in one part, more than the 1,000 a layout is built from "
                            "(a shorter sequence, larger blocks or a sparser pattern)")
    assert isinstance(err.value, ValueError) and blocks is not None
