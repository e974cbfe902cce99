"""The split probe's bookkeeping (kernels/split_probe.py): its halves are the fixed pattern's pairs, once each."""

import pytest

from megastride.kernels import patterns as P
from megastride.kernels import split_probe as S


@pytest.mark.parametrize("windows", [2, 4, 16, 128])
def test_levels_cover_each_earlier_window_once(windows):
    pairs = S.level_pairs(windows)
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == {(w, u) for w in range(windows) for u in range(w)}


@pytest.mark.parametrize("n,l,c", [(4096, 512, 64), (65536, 2048, 128), (1048576, 8192, 128)])
def test_halves_add_up_to_the_fixed_pattern(n, l, c):
    window = P.closed_form_pairs(P.fixed_window(l), n)
    assert window + S._summary_pairs(n, l, c, 1) == P.closed_form_pairs(P.fixed(l, c), n)
    assert S._summary_pairs(n, l, c, 3) == 3 * S._summary_pairs(n, l, c, 1)


def test_groups_partition_the_windows_after_the_first():
    for windows, count in [(128, 16), (64, 4), (5, 8)]:
        groups = S._groups(windows, count)
        covered = [w for a, b in groups for w in range(a, b)]
        assert covered == list(range(1, windows))


def test_levels_refuse_other_counts():
    with pytest.raises(ValueError, match="power-of-two"):
        S.level_shapes(12)


def test_refuses_to_run_without_a_gpu(monkeypatch):
    monkeypatch.setattr(S.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        S.main(["--lengths", "4096"])


@pytest.mark.parametrize("argv,message", [(["--configs", "8x64x2"], "is not NxHxD"),
                                          (["--lengths", "1000"], "multiple of the block"),
                                          (["--configs", "8x65"], "head dim of 16, 32")])
def test_refuses_a_malformed_case_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        S.main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err


def test_bias_groups_equal_each_window_against_its_own_prefix(monkeypatch):
    import torch
    import torch.nn.functional as F

    monkeypatch.setattr(S, "_sdpa", lambda backend, q, k, v, causal, bias=None:
                        F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal))
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1024, 2, 16) for _ in range(3))
    l, c = 64, 8
    out = S._summary_fn(l, c, 4, "cudnn")(q, k, v)
    ks, vs, qw = S._summary_keys(k, l, c), S._summary_keys(v, l, c), S._windows(q, l)
    ref = torch.stack([F.scaled_dot_product_attention(qw[w], ks[: w * c].transpose(0, 1), vs[: w * c].transpose(0, 1))
                       for w in range(1, 1024 // l)])
    torch.testing.assert_close(out, ref)
