"""Arguments a user can get wrong, across the commands: each is one line naming the problem, exit status 2,
before any work is done or anything written (found by trying to break the CLI, 2026-12-03)."""

import importlib
from pathlib import Path

import pytest
import torch

from megastride.engine import checkpoint as ckpt
from megastride.engine.config import dump_config, load_config
from megastride.engine.model import SparseTransformer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run(module: str, argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``megastride.launch.<module>.main(argv)``."""
    main = importlib.import_module(f"megastride.launch.{module}").main
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip()


def one_line(code: int, err: str, prog: str, message: str) -> None:
    assert code == 2, err
    lines = [x for x in err.splitlines() if not x.startswith("[")]  # DeepSpeed's accelerator notice
    assert len(lines) == 1 and lines[0].startswith(f"megastride {prog}: error: "), err
    assert message in lines[0], (message, lines[0])


@pytest.fixture
def files(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("mine")
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["--size-mb", "0"], "--size-mb must be a finite number above 0, got 0"),
    (["--lengths", "0"], "--lengths must be positive, got 0"),
    (["--size-mb", "1"],  # the default lengths: 65,536 and 1,048,576
     "--lengths: a window of L + 1 = 1,048,577 bytes does not fit the --size-mb 1 of data (1,048,576 bytes)"),
    (["--threads", "0"], "--threads must be a finite number at least 1, got 0"),
    (["--seconds", "nan"], "--seconds must be a finite number above 0, got nan"),
    (["--out", "{folder}"], "--out {folder} is a folder, not a file"),
    (["--workdir", "{file}"], "--workdir {file} is a file, not a folder"),
])
def test_bench_data(argv, message, files, capsys):
    fill = lambda x: x.format(folder=files / "folder", file=files / "file.txt")  # noqa: E731
    code, err = run("bench_data", [fill(a) for a in argv] + ["--quiet"], capsys)
    one_line(code, err, "bench data", fill(message))
    assert sorted(p.name for p in files.iterdir()) == ["file.txt", "folder"]


@pytest.mark.parametrize("argv, message", [
    (["--out", "{file}"], "--out {file} is a file, not a folder"),
    (["--out", "{file}/sub"], "--out {file}/sub: {file} is a file, not a folder"),
    (["--memory-fraction", "2"], "--memory-fraction must be a finite number above 0 and at most 1, got 2"),
    (["--budget-s", "-1"], "--budget-s must be a finite number above 0, got -1"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--warmup", "-1"], "--warmup must be 0 or more, got -1"),
])
def test_bench_scaling_checks_its_output_before_the_sweep(argv, message, files, capsys):
    fill = lambda x: x.format(file=files / "file.txt")  # noqa: E731
    code, err = run("bench_scaling", ["--device", "cpu", "--quick", *[fill(a) for a in argv]], capsys)
    one_line(code, err, "bench scaling", fill(message))
    assert (files / "file.txt").read_text() == "mine"


def test_curves_checks_its_png_first_and_leaves_out_a_last_line_cut_off(files, capsys):
    """--out must be a .png that can be written (checked before the tables); a metrics file whose last line a
    killed run cut off mid-write is read without it, with a note (a cut line before the end is still an error)."""
    run_dir = files / "run"
    run_dir.mkdir()
    good = '{"step": 1, "train/bits_per_byte": 7.0}\n{"step": 2, "train/bits_per_byte": 6.5}\n'
    (run_dir / "metrics.jsonl").write_text(good + '{"step": 3, "train/bits_')
    for out, message in ((files / "folder", "is a folder, not a file"), (files / "c.txt", "must end in .png"),
                         (files / "file.txt" / "c.png", "is a file, not a folder")):
        code, err = run("curves", [str(run_dir), "--out", str(out)], capsys)
        one_line(code, err, "curves", message)
    code, err = run("curves", [str(run_dir)], capsys)
    assert code == 0 and err == f"note: {run_dir / 'metrics.jsonl'}:3: left out a last line cut off mid-write"
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "train/bits_')
    code, err = run("curves", [str(run_dir)], capsys)  # cut off, but not after a complete line: nothing to show
    one_line(code, err, "curves", "no bits-per-byte values in it")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "train/bits_\n' + good)
    code, err = run("curves", [str(run_dir)], capsys)
    one_line(code, err, "curves", "metrics.jsonl:1: not a metrics line")


@pytest.fixture
def trained(tiny_config, tmp_path):
    """A run folder as training leaves it (config and one checkpoint of its model)."""
    cfg = load_config(tiny_config())
    root = tmp_path / "run"
    tag = ckpt.tag_for(2)
    (root / "checkpoints" / tag).mkdir(parents=True)
    (root / "checkpoints" / "latest").write_text(tag)
    torch.save({"module": SparseTransformer(cfg.model).state_dict()}, root / "checkpoints" / tag / "mp_rank_00_model_states.pt")
    (root / "config.yaml").write_text(dump_config(cfg))
    return root


@pytest.mark.parametrize("argv, message", [
    (["--bytes", "0"], "--bytes must be a finite number at least 1, got 0"),
    (["--temperature", "nan"], "--temperature must be a finite number at least 0, got nan"),
    (["--temperature", "-1"], "--temperature must be a finite number at least 0, got -1"),
    (["--top-k", "-3"], "--top-k must be a finite number at least 0, got -3"),
    (["--top-k", "1000"], "--top-k must be a finite number at least 0 and at most 256, got 1000"),
    (["--out", "{run}"], "is a folder, not a file"),
    (["--prompt-file", "{run}/nothing.bin"], "--prompt-file {run}/nothing.bin: No such file or directory"),
    (["--prompt-file", "{run}"], "--prompt-file {run} is a folder, not a file"),
    (["--prompt-file", "{run}/empty.bin"], "--prompt-file {run}/empty.bin is empty"),
    (["--prompt", "ab", "--prompt-file", "{run}/empty.bin"], "argument --prompt-file: not allowed with argument --prompt"),
])
def test_sample(argv, message, trained, capsys):
    (trained / "empty.bin").write_bytes(b"")
    code, err = run("sample", [str(trained), *[a.format(run=trained) for a in argv]], capsys)
    one_line(code, err, "sample", message.format(run=trained))


def test_sample_runs_with_good_arguments(trained, capsys):
    code, _ = run("sample", [str(trained), "--bytes", "4", "--top-k", "5", "--out", str(trained / "s.bin")], capsys)
    assert code == 0 and len((trained / "s.bin").read_bytes()) == 4


@pytest.mark.parametrize("argv, message", [
    (["--windows", "0"], "--windows must be a finite number at least 1, got 0"),
    (["--device", "bogus"], "--device: unknown device 'bogus'"),
    pytest.param(["--device", "cuda"], "--device cuda: torch sees no CUDA GPU here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")),
])
def test_eval(argv, message, trained, capsys):
    code, err = run("evaluate", [str(trained), *argv], capsys)
    one_line(code, err, "eval", message)


@pytest.mark.parametrize("argv, message", [
    (["draw", "fixed(32,8)", "--out", "{folder}"], "--out {folder} is a folder, not a file"),
    (["draw", "fixed(32,8)", "--out", "{dir}/p.txt"], "the file name must end in .png"),
    (["draw", "fixed(32,8)", "--out", "{file}/p.png"], "{file} is a file, not a folder"),
    (["draw", "fixed(32,8)", "--scale", "-1", "--out", "{dir}/p.png"], "--scale must be 0 (fit) or a positive number"),
    (["draw", "fixed(128,32)", "--seq-len", "1048576", "--block", "64", "--scale", "10", "--out", "{dir}/p.png"],
     "--scale 10: the picture would be 163,840 pixels a side (at most 16,384"),
    (["draw", "fixed(32,8)", "--seq-len", "8192", "--block", "0", "--out", "{dir}/p.png"],
     "sequence length 8192 and block size 0 must be positive"),  # checked before the picture's size
    (["show", "local(64)", "--heads", "0"], "--heads must be at least 1, got 0"),
    (["show", "local(64)|dense"], "names 2 head patterns for 1 head: the extra ones would never run"),
    (["show", "local(64)|", "--heads", "2"], "unknown attention pattern ''"),
])
def test_patterns(argv, message, files, capsys):
    fill = lambda x: x.format(folder=files / "folder", file=files / "file.txt", dir=files)  # noqa: E731
    code, err = run("patterns", [fill(a) for a in argv], capsys)
    one_line(code, err, "patterns", fill(message))
    assert sorted(p.name for p in files.iterdir()) == ["file.txt", "folder"]


@pytest.mark.parametrize("flag", ["--gpu-memory-gb", "--host-memory-gb"])
def test_plan_refuses_memory_that_is_not_a_finite_size(flag, capsys):
    for value in ("nan", "inf", "-1", "0"):
        code, err = run("plan", [str(CONFIGS / "tiny.yaml"), flag, value], capsys)
        one_line(code, err, "plan", f"{flag} must be a positive finite number, got {float(value)}")


@pytest.mark.parametrize("flag", ["--seq-len", "--world-size", "--gpus-per-node"])
def test_plan_names_the_count_that_is_not_positive(flag, capsys):
    for value in ("0", "-64"):
        code, err = run("plan", [str(CONFIGS / "tiny.yaml"), flag, value], capsys)
        one_line(code, err, "plan", f"{flag} must be a positive finite number, got {value}")


@pytest.mark.parametrize("argv, message", [
    (["{config}", "--set", "model.attention.layers=[fixed(128,32)"], "override model.attention.layers: not a valid YAML value"),
    (["{config}", "--set", "train.steps=!!python/object:os.system ls"], "override train.steps: not a valid YAML value"),
    (["{config}", "--set", "=5"], "override '=5': no key before '='"),
    (["{binary}"], "not UTF-8 text (a YAML config is expected)"),
    (["{folder}"], "is a folder, not a file"),
    (["{config}", "--deepspeed", "--world-size", "0"], "--world-size must be a finite number at least 1, got 0"),
])
def test_config(argv, message, files, capsys):
    (files / "bin.yaml").write_bytes(b"model:\n  d_model: \xff\xfe\n")
    fill = lambda x: x.format(config=CONFIGS / "tiny.yaml", binary=files / "bin.yaml", folder=files / "folder")  # noqa: E731
    code, err = run("config", [fill(a) for a in argv], capsys)
    one_line(code, err, "config", message)


def test_stats_refuses_windows_of_nothing(tmp_path, capsys):
    """(--windows 0 was refused already: tests/test_data_stats.py)"""
    code, err = run("stats", [str(tmp_path / "any.zarr"), "--seq-len", "0"], capsys)
    one_line(code, err, "stats", "--seq-len must be a finite number at least 1, got 0")


@pytest.mark.parametrize("module, argv, message", [
    ("plan", ["--seq-len", "abc"], "argument --seq-len: invalid int value: 'abc'"),
    ("plan", ["x.yaml", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ("bench_scaling", ["--steps"], "argument --steps: expected one argument"),
    ("train", [], "the following arguments are required: config"),
    ("prepare", ["video"], "invalid choice: 'video' (choose from 'text', 'bytes', 'images', 'audio', 'info')"),
    ("prepare", ["text", "--out"], "argument --out: expected one argument"),
    ("stats", ["--windows", "x"], "argument --windows: invalid int value: 'x'"),
])
def test_arguments_argparse_refuses_are_one_line_too(module, argv, message, capsys):
    """argparse's own errors (a value of the wrong type, an unknown flag, a missing argument) come as one line
    naming the problem and where the options are listed, not the usage block first."""
    code, err = run(module, argv, capsys)
    name = err.split(": error: ")[0].removeprefix("megastride ")
    one_line(code, err, name, message)
    assert name.split()[0] == module.split("_")[0]
    assert err.endswith(f"(megastride {name} --help lists the options)") and "usage:" not in err


def test_plan_refuses_a_length_whose_layout_it_cannot_build(capsys):
    """64,000,000,000 tokens (the CLI audit's case, killed for memory before) and the paper's quadratic
    fixed(128,32) at 640M: one line each, before any tensor of that size."""
    code, err = run("plan", [str(CONFIGS / "enwik8.yaml"), "--seq-len", "64000000000"], capsys)
    one_line(code, err, "plan", "sequence length 64,000,000,000 in 128-token blocks is 500,000,000 block rows")
    code, err = run("plan", [str(CONFIGS / "enwik8.yaml"), "--seq-len", "640000000"], capsys)
    one_line(code, err, "plan", "fixed(128,32) at 640,000,000 tokens in 128-token blocks: its layout would take")


def test_prepare_names_an_output_it_cannot_write(files, capsys):
    """An --out where nothing can be created (/proc takes no new folders, even from root) is one line naming
    the store's path, not the hidden staging folder's, and nothing is left behind."""
    (files / "t.txt").write_text("hello world " * 50)
    for out in ("/proc/megastride_test.zarr", "/proc/no/such/megastride_test.zarr"):
        code, err = run("prepare", ["text", str(files / "t.txt"), "--out", out, "--quiet"], capsys)
        one_line(code, err, "prepare", f"{out}: cannot write a store there (")
        assert ".partial" not in err
