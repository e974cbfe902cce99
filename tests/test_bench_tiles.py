"""`megastride bench tiles` without a GPU: config parsing, the configs a spec names, the table, the
CLI's one-line errors (the timings themselves run on the H200: docs/benchmarks.md "Tile sweeps")."""

import pytest

from megastride.kernels import blocksparse as B
from megastride.kernels import tile_sweep as S
from megastride.launch import bench_tiles


def test_configs_parse_both_forms_and_round_trip():
    assert S.parse_tile("fwd", "128x64w4s5") == (128, 64, 4, 5)
    assert S.parse_tile("merged", "64x64+128x32w4s3") == (64, 64, 128, 32, 4, 3)
    for kernel, text in (("fwd", "128x64w4s5"), ("merged", "64x64+128x32w4s3")):
        assert S.tile_name(S.parse_tile(kernel, text)) == text
    with pytest.raises(ValueError, match="not a fwd config"):
        S.parse_tile("fwd", "64x64+128x32w4s3")
    with pytest.raises(ValueError, match="not a merged config"):
        S.parse_tile("merged", "128x64w4s5")
    with pytest.raises(ValueError, match="powers of two"):
        S.parse_tile("dq", "96x64w4s3")


def test_list_expands_to_the_autotuning_list_and_tiles_wider_than_the_block_drop():
    listed = B.tile_list(B._FWD_TILES, 128, 64)
    assert (64, 64, 4, 5) not in listed
    got = S.configs_for("fwd", f"list,{S.tile_name(listed[-1])},256x64w4s3,64x64w4s5", 128, 64)
    assert got[:len(listed)] == listed  # in list order, no repeats
    assert got[len(listed):] == [(64, 64, 4, 5)]
    assert (256, 64, 4, 3) not in got  # wider than the block
    assert S.configs_for("fwd", "128x64w4s5", 64, 64) == []  # block 64: nothing fits
    assert S.configs_for("merged", "list", 128, 64) == B.tile_list(B._MERGED_TILES, 128, 64, B._MERGED_NAMES)


def test_table_puts_each_config_beside_flex_of_its_case():
    base = {"pattern": "fixed", "heads": 8, "head_dim": 64, "kernel": "fwd"}
    rows = [{**base, "seq_len": 65536, "impl": "ours", "tile": "128x128w4s5", "ms": 1.0, "tflops": 400.0, "max_err": 1e-3},
            {**base, "seq_len": 65536, "impl": "ours", "tile": "64x64w4s5", "error": "OutOfResources: shared memory"},
            {**base, "seq_len": 65536, "impl": "flex", "tile": "(Flex's own)", "ms": 1.2, "tflops": 333.0, "max_err": 1e-3},
            {**base, "seq_len": 262144, "impl": "ours", "tile": "128x128w4s5", "ms": 9.0, "tflops": 380.0, "max_err": 1e-3}]
    lines = S.table(rows).splitlines()
    assert "| 128x128w4s5 | 1.000 | 400 | 1.20× |" in lines[2]
    assert "failed: OutOfResources" in lines[3]
    assert "| (Flex's own) | 1.200 | 333 | — |" in lines[4]
    assert "| 128x128w4s5 | 9.000 | 380 | — |" in lines[5]  # no Flex in that case: no ratio


def test_a_backward_sweep_table_has_a_dq_column_and_marks_a_failed_check():
    """Backward sweeps check each config's dQ rows too: a column of its own, and a config whose check
    failed (``check_failed``) says FAILED beside that error, so its time is not read as the attention's."""
    base = {"pattern": "fixed", "seq_len": 65536, "heads": 8, "head_dim": 64, "kernel": "dkdv"}
    rows = [{**base, "impl": "ours", "tile": "32x128w4s5", "ms": 4.0, "tflops": 400.0, "max_err": 1e-3,
             "dq_max_err": 3.0, "check_failed": ["dQ"]},
            {**base, "impl": "ours", "tile": "64x64w4s5", "ms": 4.4, "tflops": 364.0, "max_err": 1e-3, "dq_max_err": 2e-3},
            {**base, "impl": "flex", "tile": "(Flex's own)", "ms": 5.0, "tflops": 320.0, "max_err": 1e-3}]
    lines = S.table(rows).splitlines()
    assert lines[0].endswith("| max err | dQ max err |"), lines[0]
    assert "| 1.0e-03 | 3.0e+00 FAILED |" in lines[2] and "FAILED" not in lines[3], lines
    assert lines[4].endswith("| 1.0e-03 | — |"), lines[4]
    assert all(line.count("|") == lines[0].count("|") for line in lines), lines


def test_table_with_replays_compares_each_config_with_flexs_replay_of_its_case():
    """--graphs: a config's replayed time beside Flex's replayed time of the same case (not its eager one),
    a capture that failed said so, and a case without a replayed Flex gets no ratio."""
    base = {"pattern": "fixed", "heads": 8, "head_dim": 64, "kernel": "fwd"}
    rows = [{**base, "seq_len": 3072, "impl": "ours", "tile": "128x128w4s5", "ms": 0.9, "tflops": 5.0, "max_err": 1e-3,
             "graph_ms": 0.036},
            {**base, "seq_len": 3072, "impl": "ours", "tile": "64x128w4s5", "ms": 0.9, "tflops": 5.0, "max_err": 1e-3,
             "graph_ms": 0.030},
            {**base, "seq_len": 3072, "impl": "ours", "tile": "64x64w4s3", "ms": 0.9, "tflops": 5.0, "max_err": 1e-3,
             "graph_error": "RuntimeError: capture"},
            {**base, "seq_len": 3072, "impl": "flex", "tile": "(Flex's own)", "ms": 0.6, "tflops": 7.0, "max_err": 1e-3,
             "graph_ms": 0.035},
            {**base, "seq_len": 12288, "impl": "ours", "tile": "128x128w4s5", "ms": 1.1, "tflops": 9.0, "max_err": 1e-3,
             "graph_ms": 0.117}]
    lines = S.table(rows).splitlines()
    assert lines[0].endswith("| replayed ms | replayed vs Flex |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| 0.67× | 1.0e-03 | 0.036 | 0.97× |" in lines[2]  # eager against eager, replay against replay
    assert lines[3].endswith("| 0.030 | 1.17× |")
    assert lines[4].endswith("| failed |  |")
    assert lines[5].endswith("| 0.035 | — |")
    assert lines[6].endswith("| 0.117 | — |")  # no Flex in that case


@pytest.mark.parametrize("argv,message", [
    (["--kernel", "bwd"], "--kernel must be one of fwd, dq, dkdv, merged"),
    (["--tiles", "list,128x64"], "'128x64' is not a fwd config"),
    (["--kernel", "merged", "--tiles", "128x64w4s3"], "is not a merged config"),
    (["--configs", "8x64x2"], "is not HEADSxHEAD_DIM"),
    (["--lengths", "65536,lots"], "invalid literal"),
    (["--rounds", "-1"], "--rounds and --preheat must be 0 or more"),
    (["--preheat", "-2"], "--rounds and --preheat must be 0 or more"),
])
def test_cli_errors_are_one_line_before_any_gpu_work(argv, message, capsys):
    assert bench_tiles.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_cli_without_a_gpu_says_so(capsys):
    assert bench_tiles.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_alternated_rounds_take_every_config_the_autotuners_choice_and_flex_in_turn(monkeypatch):
    """--rounds: after the sequential timings, rounds over the configs that ran (each under its forced
    tiles and the kernel's dQ mode), the autotuner's choice (a row of its own after the configs) and Flex;
    a config that failed stays a failed row; the table gets the rounds' medians and clocks."""
    import os

    import torch

    from megastride.kernels import bench as Bn

    base = {"pattern": "fixed", "seq_len": 1048576, "heads": 8, "head_dim": 64, "kernel": "dkdv"}
    out = [{**base, "impl": "ours", "tile": "32x128w4s5", "ms": 250.0, "tflops": 370.0, "max_err": 1e-3},
           {**base, "impl": "ours", "tile": "64x64w4s5", "error": "OutOfResources: shared memory"},
           {**base, "impl": "ours", "tile": "64x128w8s5", "ms": 60.0, "tflops": 300.0, "max_err": 1e-3},
           {**base, "impl": "flex", "tile": "(Flex's own)", "ms": 290.0, "tflops": 310.0, "max_err": 1e-3}]
    seen = []

    def call_of(fn, entry=None):
        return lambda: seen.append((fn, entry, os.environ.get("MEGASTRIDE_BLOCKSPARSE_DQ")))

    per = {("ours", None): 249.0, ("ours", (32, 128, 4, 5)): 247.0, ("ours", (64, 128, 8, 5)): 268.0,
           ("flex", None): 286.0}
    monkeypatch.setattr(Bn, "_event_timer", lambda step, calls: (step(), per[seen[-1][:2]] + calls / 100)[1])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(Bn, "gpu_state", lambda: {"sm_mhz": 1800.0})
    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_DQ", raising=False)
    monkeypatch.setattr(B, "chosen_tiles", lambda kernel, clear=False: [(32, 128, 4, 5)] if kernel == "dkdv" else [])
    S._alternate_rows(out, call_of, "ours", "flex", {"MEGASTRIDE_BLOCKSPARSE_DQ": "separate"}, base, rounds=2,
                      preheat_s=0.0, log=lambda s: None)
    assert [r["tile"] for r in out] == ["32x128w4s5", "64x64w4s5", "64x128w8s5", "auto", "(Flex's own)"]
    # one call of the autotuner's choice (the preheat, which names its config), then each round: every
    # entry's untimed call, then its timed one; the dQ mode set for ours, not for Flex
    order = [(fn, entry) for fn, entry, _ in seen]
    one_round = [("ours", None), ("ours", (32, 128, 4, 5)), ("ours", (64, 128, 8, 5)), ("flex", None)]
    assert order == [("ours", None)] + [x for x in one_round for _ in range(2)] * 2
    assert out[3]["chosen"] == ["32x128w4s5"]
    assert {mode for fn, _, mode in seen if fn == "ours"} == {"separate"} and \
        {mode for fn, _, mode in seen if fn == "flex"} == {None}
    # calls a round: at least ROUND_MS of work (one at 250 ms, five at 60 ms; "auto" as the fastest config)
    assert out[0]["alt_ms"] == 247.01 and out[2]["alt_ms"] == 268.04 and out[3]["alt_ms"] == 249.04
    assert out[4]["alt_ms"] == 286.01 and "alt_ms" not in out[1]
    lines = S.table(out).splitlines()
    assert lines[0].endswith("| alternated ms | SM MHz |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| auto | the autotuner's choice: 32x128w4s5 | | | | 249.040 | 1,800 |" in lines[5]
    assert lines[3].endswith("| — | — |")  # the failed config: no rounds


def test_the_autotuners_choice_is_recorded_per_kernel_until_cleared(monkeypatch):
    """blocksparse.chosen_tiles: the config the autotuner chose for each tuning key a kernel launched with,
    whether it tuned at that launch or took its cached choice; forced or fixed tiles record nothing."""
    from unittest import mock

    import triton

    class Tuned:  # triton.autotune's surface that _launch uses
        arg_names, keys = ["X", "BLOCK"], ["BLOCK"]

        def __init__(self):
            self.cache, self.tuned = {}, 0

        def __getitem__(self, grid):
            def tune(*args, **consts):
                self.tuned += 1
                best = (64, 128) if consts["BLOCK"] == 128 else (64, 64)
                self.cache[(consts["BLOCK"],)] = triton.Config(dict(zip(B._TILE_NAMES, best)), num_warps=4,
                                                               num_stages=5)
            return tune

    launched = []
    monkeypatch.setattr(B, "_CHOSEN", {})  # no choice left by an earlier test in this worker (xdist orders vary)
    monkeypatch.setattr(B, "_fixed_tiles", lambda block, names=B._TILE_NAMES: None)
    monkeypatch.setattr(B, "_launch_chosen", lambda kernel, grid, args, consts: launched.append(consts))
    tuned = Tuned()
    for block in (128, 128, 64):
        B._launch(tuned, "kernel", (1,), ("x",), {"BLOCK": block}, name="fwd")
    assert tuned.tuned == 2 and len(launched) == 1 and launched[0]["BLOCK_M"] == 64  # the cached choice ran
    assert B.chosen_tiles("fwd") == [(64, 128, 4, 5), (64, 64, 4, 5)] and B.chosen_tiles("dq") == []
    assert B.chosen_tiles("fwd", clear=True) == [(64, 128, 4, 5), (64, 64, 4, 5)]
    assert B.chosen_tiles("fwd") == []
    plain = mock.MagicMock()  # the kernel launched with forced tiles, without the autotuner
    with B.forced_tiles("fwd", (128, 64, 4, 3)):
        B._launch(tuned, plain, (1,), ("x",), {"BLOCK": 128}, name="fwd")
    plain.__getitem__.return_value.assert_called_once()
    assert B.chosen_tiles("fwd") == []


def test_bench_notes_name_each_kernels_tiles_and_the_autotuners_timings(monkeypatch):
    """bench.tile_choices: one note per kernel the autotuner served since the last clear, its choice and,
    for keys it timed then, each config's median as it measured it; cleared, nothing is left."""
    import triton

    from megastride.kernels import bench as Bn

    def config(m, n, warps, stages):
        return triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages)

    chosen, other = config(128, 128, 4, 5), config(64, 128, 4, 5)
    monkeypatch.setattr(B, "_CHOSEN", {
        "fwd": {("a",): (chosen, B._TILE_NAMES, {chosen: [0.0296, 0.029, 0.030], other: [0.0359, 0.035, 0.036]}),
                ("b",): (chosen, B._TILE_NAMES, None)},  # a key tuned before the clear: its choice only
        "dq": {}})
    assert Bn.tile_choices(clear=False) == ["fwd tiles 128x128w4s5 (tuned 128x128w4s5 29.6 us, 64x128w4s5 35.9 us)"]
    assert Bn.tile_choices(clear=True) and Bn.tile_choices() == []

