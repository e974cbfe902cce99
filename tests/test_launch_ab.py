"""kernels/launch_ab.py: the eager host-cost A/B of direct launches (its timing needs a GPU; its case
parsing, alternation and bookkeeping are checked here)."""

import os

import pytest
import torch

from megastride.kernels import launch_ab


def test_cases_parse_and_bad_ones_name_the_item():
    assert launch_ab.parse_cases("12288x8x64, 3072x2x128") == [(12288, 8, 64), (3072, 2, 128)]
    for raw, message in [("12288x8", "is not NxHxD"), ("100x8x64", "multiple of the block"),
                         ("12288x8x48", "head dim"), ("12288x0x64", "at least one head"), ("", "no cases")]:
        with pytest.raises(ValueError, match=message):
            launch_ab.parse_cases(raw)


@pytest.mark.parametrize("before", [None, "0"])
def test_rounds_alternate_off_then_on_and_restore_the_switch(monkeypatch, before):
    """Each round runs the switch off, then on (warm-up calls untimed, synchronised around the timed
    ones); a step that costs 3 ticks off and 2 on gives those ms per call, the saving and how many rounds
    were faster on; the switch's earlier value comes back."""
    if before is None:
        monkeypatch.delenv(launch_ab.SWITCH, raising=False)
    else:
        monkeypatch.setenv(launch_ab.SWITCH, before)
    now, seen = [0.0], []

    def step():
        mode = os.environ[launch_ab.SWITCH]
        seen.append(mode)
        now[0] += 3e-3 if mode == "0" else 2e-3

    syncs = []
    got = launch_ab.alternate(step, rounds=2, calls=4, warmup=1, sync=lambda: syncs.append(1), clock=lambda: now[0])
    assert seen == (["0"] * 5 + ["1"] * 5) * 2 and len(syncs) == 8
    assert got["off_ms"] == [3.0, 3.0] and got["on_ms"] == [2.0, 2.0]
    assert got["median_off_ms"] == 3.0 and got["median_on_ms"] == 2.0
    assert got["saving"] == pytest.approx(1 / 3, abs=1e-4) and got["rounds_on_faster"] == 2
    assert os.environ.get(launch_ab.SWITCH) == before


def test_main_refuses_bad_arguments_and_a_machine_without_a_gpu(capsys):
    assert launch_ab.main(["--cases", "12288x8"]) == 2
    assert capsys.readouterr().err.strip() == "launch_ab: case '12288x8' is not NxHxD (e.g. 12288x8x64)"
    assert launch_ab.main(["--rounds", "0"]) == 2
    assert "--rounds and --calls must be at least 1" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert launch_ab.main([]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


def test_another_switch_alternates_the_same_way_and_an_unknown_one_is_refused(monkeypatch, capsys):
    """--switch MEGASTRIDE_BLOCKSPARSE_GLUON: the rounds set that variable off then on (and restore it),
    not the direct-launch one; a variable outside SWITCHES is refused by the parser."""
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_GLUON", raising=False)
    monkeypatch.setenv(launch_ab.SWITCH, "1")
    seen = []
    launch_ab.alternate(lambda: seen.append((os.environ["MEGASTRIDE_BLOCKSPARSE_GLUON"], os.environ[launch_ab.SWITCH])),
                        rounds=1, calls=1, warmup=0, switch="MEGASTRIDE_BLOCKSPARSE_GLUON")
    assert seen == [("0", "1"), ("1", "1")] and "MEGASTRIDE_BLOCKSPARSE_GLUON" not in os.environ
    with pytest.raises(SystemExit):
        launch_ab.main(["--switch", "MEGASTRIDE_BLOCKSPARSE_SPLIT_FINISH"])
    assert "invalid choice: 'MEGASTRIDE_BLOCKSPARSE_SPLIT_FINISH'" in capsys.readouterr().err


def test_a_valued_switch_alternates_the_two_values_given_and_bad_values_are_one_line_errors(monkeypatch, capsys):
    """--switch MEGASTRIDE_BLOCKSPARSE_DQ --values auto,atomic: the rounds set the first value, then the
    second ("off" and "on" in the row, which names them), and restore the variable; values the switch does
    not take, a repeated one or a count other than two are refused before any GPU work."""
    monkeypatch.setenv("MEGASTRIDE_BLOCKSPARSE_DQ", "merged")
    seen = []
    ticks = iter(range(100))
    got = launch_ab.alternate(lambda: seen.append(os.environ["MEGASTRIDE_BLOCKSPARSE_DQ"]), rounds=2, calls=1,
                              warmup=0, clock=lambda: next(ticks) / 1e3, switch="MEGASTRIDE_BLOCKSPARSE_DQ",
                              values=("auto", "atomic"))
    assert seen == ["auto", "atomic", "auto", "atomic"] and os.environ["MEGASTRIDE_BLOCKSPARSE_DQ"] == "merged"
    assert got["values"] == ["auto", "atomic"] and got["off_ms"] == [1.0, 1.0] and got["on_ms"] == [1.0, 1.0]
    assert launch_ab.parse_values("MEGASTRIDE_BLOCKSPARSE_DQ", "auto, atomic") == ("auto", "atomic")
    assert launch_ab.parse_values(launch_ab.SWITCH, "1,0") == ("1", "0")
    for switch, raw, message in [("MEGASTRIDE_BLOCKSPARSE_DQ", "auto,atomc", "does not take 'atomc' (one of auto,"),
                                 ("MEGASTRIDE_BLOCKSPARSE_DQ", "auto,auto", "two different values"),
                                 ("MEGASTRIDE_BLOCKSPARSE_DQ", "auto", "two different values"),
                                 ("MEGASTRIDE_BLOCKSPARSE_GLUON", "0,auto", "does not take 'auto' (one of 0, 1)")]:
        assert launch_ab.main(["--switch", switch, "--values", raw]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err


def test_each_row_names_the_autotuners_choices_and_then_forgets_them(monkeypatch):
    """chosen_tiles_now: per kernel the autotuner served since the last call, its choices (one per tuning
    key: the dQ modes' dK/dV launches are two keys) and each timed config's median in ms; kernels it did
    not serve are left out, and a second call finds nothing."""
    import triton

    from megastride.kernels import blocksparse as B

    def config(m, n, warps, stages):
        return triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages)

    plain, other = config(32, 128, 4, 5), config(64, 64, 4, 5)
    monkeypatch.setattr(B, "_CHOSEN", {
        "dkdv": {("FUSED_DQ", 0): (plain, B._TILE_NAMES, {plain: [120.6, 120.0, 121.0], other: [123.0, 122.0, 124.0]}),
                 ("FUSED_DQ", 2): (other, B._TILE_NAMES, None)},
        "dq": {}})
    assert launch_ab.chosen_tiles_now() == {
        "dkdv": {"chosen": ["32x128w4s5", "64x64w4s5"], "timed": [{"32x128w4s5": 120.6, "64x64w4s5": 123.0}]}}
    assert launch_ab.chosen_tiles_now() == {}


def test_two_values_that_compute_different_results_are_caught_before_timing():
    """disagreement: per tensor, the largest difference relative to max(1, the second value's largest
    magnitude); equal results within bf16 rounding stay under AGREE_TOL, a wrong dQ (the swapped atomic dQ
    product at a 32-row tile, miscompiled on sm_90: relative error 3.0) and NaN do not."""
    gen = torch.Generator().manual_seed(0)
    ref = [torch.randn(64, 16, generator=gen) * 3 for _ in range(4)]
    rounded = [t.bfloat16().float() for t in ref]
    near = launch_ab.disagreement(rounded, ref)
    assert set(near) == {"out", "dq", "dk", "dv"} and max(near.values()) <= launch_ab.AGREE_TOL, near
    wrong = [ref[0], ref[1] * -2.0, ref[2], ref[3]]
    far = launch_ab.disagreement(wrong, ref)
    assert far["dq"] > 1.0 and far["out"] == 0.0, far
    nan = [ref[0], ref[1], ref[2].clone().fill_(float("nan")), ref[3]]
    assert launch_ab.disagreement(nan, ref)["dk"] == float("inf")
