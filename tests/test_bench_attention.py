"""The attention bench's cases (kernels.bench): the equal-density strided case issue 3's target needs."""

import math

import pytest
import torch

from megastride.kernels import patterns as P
from megastride.kernels.bench import Case, case_pattern, matched_stride


def _density(pattern, n, block):
    layout = P.build_layout(pattern, n, block)
    return layout.count_pairs(0) / (n * (n + 1) / 2)


@pytest.mark.parametrize("n", [16384, 65536])
def test_matched_stride_is_the_permuted_stride_nearest_the_fixed_density(n):
    """Counted from real layouts: no other stride the permuted path takes (a divisor of n, a multiple of
    16, at least one 128-block wide; groups narrower than a block allowed) comes nearer the fixed case's
    density, and the case's layout puts the strided half in a permuted part."""
    fixed, _, fixed_block, _ = case_pattern(Case("fixed", n, 1, 64))
    target = _density(fixed, n, fixed_block)
    l = matched_stride(n)
    candidates = [s for s in range(128, n // 2 + 1, 16) if n % s == 0]
    assert l in candidates
    gap = {s: abs(math.log(_density(P.same_for_all_heads(P.strided(s), 1), n, 64) / target)) for s in candidates}
    assert gap[l] == min(gap.values())
    pattern, stride, block, _ = case_pattern(Case("strided_matched", n, 2, 64))
    assert stride == l and pattern == P.same_for_all_heads(P.strided(l), 2)
    layout = P.build_layout(pattern, n, block)
    assert [part.permute_stride for part in layout.parts] == [None, l]
    # at 65,536 the whole-group strides (n / l a multiple of 64) are all under half the fixed density
    if n == 65536:
        assert (n // l) % 64 and 0.75 < _density(pattern, n, block) / target < 1.5


def test_matched_density_at_a_million_tokens_is_near_the_fixed_one():
    n = 1 << 20
    l = matched_stride(n)
    fixed_l = P.optimal_stride(n, "fixed", 128, 128)
    strided = 2 * l / n + 1 / l  # local l keys per query plus every l-th one
    fixed = fixed_l / n + 128 / fixed_l  # the window's half plus one summary block per window
    assert 0.6 < strided / fixed < 1.6, (l, strided, fixed)


def test_unknown_bench_pattern_is_named():
    with pytest.raises(ValueError, match="strided_matched"):
        case_pattern(Case("banded", 4096, 1, 64))


def test_the_papers_patterns_in_full_are_bench_cases_with_their_own_parameters():
    """"fixed(128,32)" (enwik8's) and "strided(96)" keep their parameters: the layout is the paper's mask
    (checked token by token against the Flex mask_mod the case hands Flex, itself the paper's formula),
    and the pattern list splits on commas outside parentheses."""
    from megastride.kernels.bench import split_patterns
    from megastride.launch.bench_attention import cases_from

    assert split_patterns("fixed, fixed(128,32),strided(96)") == ["fixed", "fixed(128,32)", "strided(96)"]
    cases = cases_from("fixed(128,32),strided(96)", "2x64", "3072")
    assert [c.pattern for c in cases] == ["fixed(128,32)", "strided(96)"]
    n = 3072
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    paper = {"fixed(128,32)": (j <= i) & ((i // 128 == j // 128) | (j % 128 >= 96)),
             "strided(96)": (j <= i) & (((i - j) < 96) | ((i - j) % 96 == 0))}
    for case in cases:
        pattern, stride, block, mask_mod = case_pattern(case)
        assert stride == (128 if case.pattern.startswith("fixed") else 96) and block in (64, 128)
        assert torch.equal(mask_mod(0, 0, i, j), paper[case.pattern])
        layout = P.build_layout(pattern, n, block)
        assert torch.equal(layout.to_dense_mask()[0], paper[case.pattern])
    for bad in ("fixed(32,32)", "fixed(128)", "strided(0)"):
        with pytest.raises(ValueError, match="fixed\\(l,c\\)|needs"):
            case_pattern(Case(bad, 4096, 1, 64))


def test_graph_timings_get_their_own_table_not_a_variant_column():
    """--graphs: replayed timings go into a second table (speed-up against Flex's replay), and are not
    mistaken for one of our backward modes' columns."""
    from megastride.kernels.bench import Result, table

    r = Result(Case("fixed", 12288, 8, 64), 1024, 128, 0.198, 10)
    r.timings.update(ours_fwdbwd_ms=1.5, flex_fwdbwd_ms=0.9, ours_graph_fwd_ms=0.1, ours_graph_fwdbwd_ms=0.45,
                     ours_graph_fwdbwd_tflops=80.0, flex_graph_fwdbwd_ms=0.9)
    lines = table([r]).splitlines()
    assert "ours_graph" not in lines[0]
    assert "Replayed from CUDA graphs (`--graphs`):" in lines
    assert lines[-1].startswith("| fixed (l=1024, block 128) | 12,288 | 8×64 | 0.100 | 0.450 | 80 |")
    assert lines[-1].endswith("| 2.00× |")
    plain = Result(Case("fixed", 12288, 8, 64), 1024, 128, 0.198, 10)
    plain.timings.update(ours_fwdbwd_ms=1.5)
    assert "CUDA graphs" not in table([plain])


def test_graph_table_has_a_column_per_backward_variant():
    """A variant timed eagerly and replayed (e.g. merged) gets its replayed f+b in the graph table."""
    from megastride.kernels.bench import Result, table

    r = Result(Case("fixed", 12288, 8, 64), 1024, 128, 0.198, 10)
    r.timings.update(ours_fwdbwd_ms=1.5, ours_merged_fwdbwd_ms=1.4, ours_graph_fwdbwd_ms=0.45,
                     ours_merged_graph_fwdbwd_ms=0.40, flex_graph_fwdbwd_ms=0.9)
    lines = table([r]).splitlines()
    graph_head = lines.index("Replayed from CUDA graphs (`--graphs`):") + 2
    assert lines[graph_head].endswith("| f+b speed-up vs Flex | ours_merged f+b ms |")
    assert lines[-1].endswith("| 2.00× | 0.400 |")
    assert lines[graph_head + 1].count("|") == lines[graph_head].count("|")


def test_bench_parser_takes_graphs():
    from megastride.launch.bench_attention import _parser

    assert _parser().parse_args(["--graphs"]).graphs and not _parser().parse_args([]).graphs


def test_unknown_bench_peer_is_a_one_line_error_before_any_gpu_work(capsys):
    """A mistyped peer is named with the known ones (on any machine, before the CUDA check)."""
    from megastride.launch.bench_attention import _peers, main

    assert main(["--peers", "flex,mergd"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown --peers mergd" in err and "merged" in err and "separate" in err
    assert _peers("flex,sdpa,separate,merged,") == {"flex", "sdpa", "separate", "merged"}


def test_bench_help_lists_every_peer_with_what_it_sets():
    """``--help`` names each of our own peers with the switches it sets (generated from the bench's table, so a
    new peer cannot be left out): e.g. halves, the fused dQ on the halves kernel."""
    import re

    from megastride.kernels.bench import OUR_VARIANTS
    from megastride.launch.bench_attention import _parser

    text = " ".join(_parser().format_help().split())
    for name, env in OUR_VARIANTS.items():
        switches = " ".join(f"{k.removeprefix('MEGASTRIDE_BLOCKSPARSE_')}={v}" for k, v in env.items())
        assert re.search(rf"\b{name} \({re.escape(switches)}\)", text), name
    assert "halves (GLUON_DQ=fp16 GLUON_WS=halves)" in text


def test_flex_is_compiled_afresh_for_each_case_and_shared_within_one():
    """A torch.compile shared across shapes recompiles later shapes with dynamic shapes, a slower Flex
    (1M tokens on the H200: 83 / 299 ms forward / backward against 66 / 221 ms static): each bench case
    and each baseline length resets dynamo and compiles for its own shapes."""
    from unittest import mock

    import torch

    from megastride.kernels import bench

    with mock.patch.object(torch._dynamo, "reset") as reset:
        first = bench.flex_compiled(fresh=True)
        assert reset.call_count == 1
        assert bench.flex_compiled() is first  # the calls within one case share its compile
        assert reset.call_count == 1
        second = bench.flex_compiled(fresh=True)
        assert second is not first and reset.call_count == 2
    # the bench's Flex function for a case asks for a fresh compile
    with mock.patch.object(bench, "flex_compiled", wraps=bench.flex_compiled) as compiled, \
            mock.patch("torch.nn.attention.flex_attention.create_block_mask", return_value="mask"), \
            mock.patch.object(torch.cuda, "synchronize"), mock.patch.object(bench, "block_mask_bytes", return_value=0):
        bench._flex_fn(None, 256, "cpu", bench.Result(Case("fixed", 256, 1, 16), 128, 128, 1.0, 1))
    compiled.assert_called_once_with(fresh=True)


@pytest.mark.parametrize("n,device,compiled", [(12288, "cuda", False), (16384, "cuda", False),
                                               (65536, "cuda", True), (65536, "cpu", False)])
def test_flex_block_mask_is_built_eagerly_up_to_the_threshold(n, device, compiled):
    """Flex's BlockMask comes from its eager build up to FLEX_EAGER_MASK_MAX tokens (its compiled build
    spent 214 s cold at 12,288 on the H200) and from the compiled one beyond it on CUDA, for the bench and
    the baseline alike."""
    from unittest import mock

    from megastride.engine import baseline
    from megastride.kernels import bench

    assert bench.FLEX_EAGER_MASK_MAX == 16384
    with mock.patch("torch.nn.attention.flex_attention.create_block_mask", return_value="mask") as create:
        assert bench.flex_block_mask("mod", n, device, 128) == "mask"
        assert baseline.fixed_block_mask(n, 1024, 128, device) == "mask"
    for call in create.call_args_list:
        assert call.args[3:5] == (n, n) and call.kwargs["_compile"] is compiled
    assert create.call_args_list[1].kwargs["BLOCK_SIZE"] == baseline.FLEX_BLOCK


@pytest.mark.parametrize("argv,message", [
    (["--configs", "8x64x2"], "is not HEADSxHEAD_DIM"),
    (["--lengths", "12k"], "invalid literal"),
    (["--lengths", "12288,65536", "--block", "1000"], "--block 1000 does not divide the length 12288"),
    (["--lengths", "1000", "--configs", "8x64"], "the fixed pattern's block 128 does not divide the length 1000"),
    (["--configs", "8x65"], "config '8x65': heads must be >= 1 and the head dim one of 16, 32, 64, 128, 256"),
    (["--configs", "0x64"], "config '0x64': heads must be >= 1"),
    (["--patterns", "fixd"], "unknown benchmark pattern 'fixd' (fixed, strided, strided_matched, fixed(l,c), strided(l))"),
    (["--lengths", "0"], "length 0 is not positive"),
])
def test_bad_configs_or_lengths_are_one_line_errors_before_the_gpu_check(argv, message, capsys):
    from megastride.launch import bench_attention

    assert bench_attention.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "bad --patterns, --lengths, --configs or --block" in err and message in err and "\n" not in err


def test_flex_block_mask_memory_is_the_bytes_of_its_tensors():
    """The bench's Flex BlockMask MB column sums the mask's own tensors (both directions, full and partial
    lists), so allocations freed by other cases in between cannot make it negative."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    from megastride.kernels.bench import block_mask_bytes, fixed_mask_mod

    n = 1024
    mask = create_block_mask(fixed_mask_mod(256, 128), None, None, n, n, device="cpu", BLOCK_SIZE=128)
    parts = [mask.kv_num_blocks, mask.kv_indices, mask.full_kv_num_blocks, mask.full_kv_indices,
             mask.q_num_blocks, mask.q_indices, mask.full_q_num_blocks, mask.full_q_indices]
    expected = sum(t.untyped_storage().nbytes() for t in parts if t is not None)
    assert expected >= 2 * 8 * 8 * 4  # at least the (8 x 8) int32 index tables of both directions
    assert block_mask_bytes(mask) == expected
    garbage = torch.empty(1 << 20)  # allocations around it change nothing
    del garbage
    assert block_mask_bytes(mask) == expected


def test_a_forced_block_reaches_every_case_and_the_layout():
    """--block sets the layout block of fixed and strided cases alike (strided_matched at 12,288 has
    groups of 8 and a band of 12 128-blocks and would take 64-blocks by itself); a block that does not
    divide n is a ValueError."""
    from megastride.launch.bench_attention import cases_from

    cases = cases_from("fixed,strided_matched", "8x64", "65536,262144", block=128)
    assert len(cases) == 4 and {c.block for c in cases} == {128}
    assert {case_pattern(c)[2] for c in cases} == {128}
    auto = cases_from("strided_matched", "8x64", "12288")[0]
    _, stride, block, _ = case_pattern(auto)
    assert auto.block is None and (12288 // stride) % 128 and block == 64
    assert case_pattern(Case("strided_matched", 12288, 8, 64, block=128))[2] == 128
    with pytest.raises(ValueError, match="block 96 does not divide the sequence length 1000"):
        case_pattern(Case("fixed", 1000, 1, 64, block=96))


@pytest.mark.parametrize("n,stride,block", [(65536, 1024, 64), (262144, 4096, 128), (1 << 20, 8192, 128),
                                            (262144, 2048, 128), (12288, 128, 64)])
def test_strided_block_is_128_where_groups_fill_it_or_the_band_is_wide(n, stride, block):
    """128-blocks where n / l fills them (262,144 / 2,048 = 128) or the band spans 20 of them, else 64."""
    from megastride.kernels.bench import strided_block

    assert strided_block(n, stride) == block


def _device_script(name: str) -> str:
    """launch/NAME's text with continued lines joined, after checking it is valid bash and gives timeout no
    shell function (timeout runs commands: a function given to it failed with status 127 on the device,
    2026-12-01)."""
    import re
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "launch" / name
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text().replace("\\\n", " ")
    functions = re.findall(r"^\s*(\w+)\s*\(\)\s*\{", text, re.M)
    assert not [f for f in functions if re.search(rf"\btimeout\s+\S+\s+{f}\b", text)]
    return text


def test_the_kernel_ab_script_names_peers_and_tiles_the_benches_take():
    """launch/h200_kernel_ab.sh (one device call of kernel comparisons): every --peers it passes is a
    known peer and every --tiles config parses for its --kernel at the 1M layout's block and head dim; the
    script is valid bash, and no timeout is given a shell function (timeout runs commands: it failed with
    status 127 on the device, 2026-12-01)."""
    import re

    from megastride.kernels.tile_sweep import configs_for
    from megastride.launch.bench_attention import _peers

    text = _device_script("h200_kernel_ab.sh")
    peers = re.findall(r"--peers (\S+)", text)
    assert peers and all(_peers(p) for p in peers)
    tiles = re.findall(r"--kernel (\w+) .*?--tiles (\S+)", text)
    assert len(tiles) == 2
    for kernel, spec in tiles:
        configs = configs_for(kernel, spec, 128, 64)
        assert len(configs) >= len(spec.split(",")) - 1


def test_nvidia_smi_state_parses_the_clock_power_and_the_caps_that_hold_it_down():
    from megastride.kernels.profiling import parse_gpu_state

    assert parse_gpu_state("1755, 693.36, 60, 0x0000000000000004") == {
        "sm_mhz": 1755.0, "power_w": 693.36, "temp_c": 60.0, "capped": True}
    assert parse_gpu_state("1980, 125.0, 37, 0x0000000000000000")["capped"] is False
    assert parse_gpu_state("345, 80.6, 35, 0x0000000000000001")["capped"] is False  # idle is not a cap
    assert parse_gpu_state("1500, 400, 90, 0x0000000000000040")["capped"] is True  # hardware thermal slowdown
    assert parse_gpu_state("[N/A], 80, 35, 0x1") == {} and parse_gpu_state("") == {}


def test_alternated_rounds_take_each_implementation_in_turn_under_its_own_environment(monkeypatch):
    """Round by round, every implementation once, in order, each under its variant's switches (restored
    after), with the GPU's state after each; medians per implementation."""
    import os

    from megastride.kernels.bench import alternate

    monkeypatch.delenv("MEGASTRIDE_BLOCKSPARSE_DQ", raising=False)
    seen = []
    clock = iter(range(100))

    def step_of(name):
        return lambda: seen.append((name, os.environ.get("MEGASTRIDE_BLOCKSPARSE_DQ")))

    ms = {"ours": iter([10.0, 12.0, 11.0]), "ours_merged": iter([9.0, 9.5, 30.0]), "flex": iter([20.0, 21.0, 19.0])}
    timer = lambda step, calls: (step(), next(ms[seen[-1][0]]))[1]  # noqa: E731
    state = lambda: {"sm_mhz": 1900.0 - next(clock), "power_w": 690.0, "capped": True}  # noqa: E731
    rows = alternate([("ours", step_of("ours"), 2, {}),
                      ("ours_merged", step_of("ours_merged"), 2, {"MEGASTRIDE_BLOCKSPARSE_DQ": "merged"}),
                      ("flex", step_of("flex"), 1, {})], rounds=3, timer=timer, state=state)
    names = [name for name, _ in seen]
    # each round: one untimed call, then the timed one (the fake timer calls once) per implementation
    assert names == ["ours", "ours", "ours_merged", "ours_merged", "flex", "flex"] * 3
    assert {mode for name, mode in seen if name == "ours_merged"} == {"merged"}
    assert {mode for name, mode in seen if name != "ours_merged"} == {None}
    assert "MEGASTRIDE_BLOCKSPARSE_DQ" not in os.environ
    assert rows["ours"]["ms"] == [10.0, 12.0, 11.0] and rows["ours"]["median_ms"] == 11.0
    assert rows["ours_merged"]["median_ms"] == 9.5 and rows["flex"]["median_ms"] == 20.0
    assert rows["ours"]["sm_mhz"] == [1900.0, 1897.0, 1894.0] and rows["flex"]["sm_mhz"] == [1898.0, 1895.0, 1892.0]
    # no nvidia-smi: the state's fields are None, the times still there
    bare = alternate([("ours", lambda: None, 1, {})], rounds=2, timer=lambda s, c: 1.0, state=dict)
    assert bare["ours"]["sm_mhz"] == [None, None] and bare["ours"]["median_ms"] == 1.0


def test_alternated_rounds_get_their_own_table_with_the_same_round_ratio_and_clocks():
    """The alternated rounds' table: medians, Flex / ours as the median of the rounds' own ratios with the
    lowest and highest of them (their spread), clocks, power, caps and energy; one round shows no spread."""
    from megastride.kernels.bench import Result, table

    r = Result(Case("fixed", 1048576, 8, 64), 11520, 128, 0.0114, 10)
    r.timings.update(ours_fwdbwd_ms=247.0, flex_fwdbwd_ms=290.0, ours_alt_fwdbwd_ms=[250.0, 248.0, 252.0],
                     ours_alt_median_ms=250.0, flex_alt_fwdbwd_ms=[300.0, 298.0, 301.0], flex_alt_median_ms=300.0,
                     alt_vs_flex=1.2, ours_alt_sm_mhz=[1800.0, 1750.0, 1700.0], flex_alt_sm_mhz=[1600.0, 1650.0, None],
                     ours_alt_power_w=[690.0, 691.0, 692.0], flex_alt_power_w=[688.0, 689.0, 690.0],
                     ours_alt_capped=[True, True, False], flex_alt_capped=[True, True, None],
                     ours_fwdbwd_joules=173.5, flex_fwdbwd_joules=None)
    lines = table([r]).splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("Alternated rounds"))
    assert lines[head + 2].count("|") == lines[head + 3].count("|") == lines[-1].count("|")
    assert lines[-1] == ("| fixed (l=11520, block 128) | 1,048,576 | 8×64 | 3 | 250.000 | 300.000 | 1.200× (1.194-1.202) "
                         "| — | 1,750 | 1,625 | 691 | 689 | 2/3, — | 173.500 / — |")
    r.timings.update(ours_alt_fwdbwd_ms=[250.0], flex_alt_fwdbwd_ms=[300.0])
    assert "| 1.200× | — |" in table([r]).splitlines()[-1]
    plain = Result(Case("fixed", 12288, 8, 64), 1024, 128, 0.198, 10)
    plain.timings.update(ours_fwdbwd_ms=1.5)
    assert "Alternated" not in table([plain])


def test_bench_rounds_default_to_three_and_refuse_a_negative_count(capsys):
    from megastride.launch.bench_attention import _parser, main

    assert _parser().parse_args([]).rounds == 3 and _parser().parse_args(["--rounds", "0"]).rounds == 0
    assert main(["--rounds", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--rounds must be 0 or more" in err


def test_energy_a_call_is_the_counter_read_around_the_calls_after_a_warm_one():
    """Joules a call: the energy counter (mJ) after ``calls`` synchronised calls minus before them, the
    first call untimed; None without a counter (no NVML: the CPU machine) or where it went backwards."""
    from megastride.kernels.bench import energy_per_call
    from megastride.kernels.profiling import gpu_energy_mj

    log, counter = [], iter([10_000, 17_000])
    got = energy_per_call(lambda: log.append("step"), 4, energy=lambda: log.append("read") or next(counter),
                          sync=lambda: log.append("sync"))
    assert got == 7.0 / 4
    assert log == ["step", "sync", "read"] + ["step"] * 4 + ["sync", "read"]
    assert energy_per_call(lambda: None, 2, energy=lambda: None, sync=lambda: None) is None
    back = iter([5, 3])
    assert energy_per_call(lambda: None, 2, energy=lambda: next(back), sync=lambda: None) is None
    if not torch.cuda.is_available():
        assert gpu_energy_mj() is None


@pytest.mark.gpu
def test_on_a_gpu_the_energy_counter_and_the_clock_are_read_and_work_adds_joules():
    """On the GPU: NVML's counter is read (through ctypes) and grows by a plausible amount over a second of
    matrix products (between 20 W and the board's limit of about 1 kW), and nvidia-smi gives a clock."""
    import time

    from megastride.kernels.bench import energy_per_call
    from megastride.kernels.profiling import gpu_energy_mj, gpu_state

    assert isinstance(gpu_energy_mj(), int)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    start = time.perf_counter()
    joules = energy_per_call(lambda: a @ a, 200)
    seconds = time.perf_counter() - start
    assert joules is not None and 20 * seconds / 200 < joules < 1000 * seconds / 200
    state = gpu_state()
    assert state and 100 < state["sm_mhz"] < 3000 and state["power_w"] > 0


def test_the_dq_row_check_takes_sampled_rows_gradients_and_catches_a_wrong_dq():
    """bench.check_dq_rows: a query row's dQ from the sampled rows alone equals the whole backward's (the
    masked dense attention of reference.naive_attention, written independently, as the function under
    test), within the tolerance; a function whose backward scales dQ (a wrong kernel) fails the check, and
    so does an output check with a NaN."""
    from megastride.kernels.bench import check_dq_rows, check_failed, check_rows
    from megastride.kernels.reference import naive_attention

    n, heads, dim = 256, 2, 16
    layout = P.build_layout(P.same_for_all_heads(P.fixed(64, 16), heads), n, 16)
    gen = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, heads, n, dim, generator=gen) for _ in range(4))
    mask = layout.pattern.mask(torch.arange(n), torch.arange(n))

    def dense(q, k, v):
        return naive_attention(q, k, v, mask)

    class ScaledDQ(torch.autograd.Function):  # identity forward, dQ times 1.5 backward
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            return 1.5 * g

    rows = torch.tensor([0, 5, 63, 64, 200, 255])
    good = check_dq_rows(dense, q, k, v, do, layout, rows)
    assert good["max_abs"] > 0.1 and not check_failed(good), good
    bad = check_dq_rows(lambda q, k, v: dense(ScaledDQ.apply(q), k, v), q, k, v, do, layout, rows)
    assert check_failed(bad), bad
    out = dense(q, k, v)
    assert not check_failed(check_rows(out, q, k, v, layout, rows))
    out[0, 1, 200, 3] = float("nan")
    assert check_failed(check_rows(out, q, k, v, layout, rows))
