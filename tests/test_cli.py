"""The console command's smaller subcommands, hostfiles, scheduler environments and mpirun."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from megastride.engine.distributed import env_from_scheduler
from megastride.kernels import patterns as P
from megastride.launch.hostfile import HostfileError, parse_hostfile

from test_train import ENV, _port, metrics, train


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megastride.launch.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def test_help_lists_subcommands():
    """`megastride --help` names every subcommand; an unknown one exits 2."""
    out = cli("--help")
    for name in ("prepare", "train", "eval", "sample", "bench", "plan", "patterns"):
        assert name in out.stdout
    wrong = cli("nonsense")
    assert wrong.returncode == 2 and wrong.stderr.startswith("megastride: error: unknown command 'nonsense'\n")
    typo = cli("trian")  # a near miss names the command meant
    assert typo.returncode == 2
    assert typo.stderr.startswith("megastride: error: unknown command 'trian' (did you mean 'train'?)\n")
    bare = cli()  # no command is a mistake too: the commands on stderr, status 2
    assert bare.returncode == 2 and bare.stdout == ""
    assert bare.stderr.startswith("megastride: error: no command given") and "prepare" in bare.stderr


def test_top_level_help_names_every_bench_kind():
    """The one line `megastride --help` gives bench lists every kind `megastride bench` runs."""
    from megastride.launch import bench, cli as top

    listed = top.SUBCOMMANDS["bench"][1].removeprefix("benchmarks: ").split(", ")
    assert listed == list(bench.BENCHES)


def test_eval_and_sample_load_the_trained_run(tiny_config, tmp_path):
    """eval reproduces the trainer's validation bits/byte; sample is deterministic per seed."""
    proc = train(tiny_config(train={"steps": 4, "eval_every": 4, "eval_windows": 4}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    out = cli("eval", str(run), "--windows", "4", "--device", "cpu")
    assert out.returncode == 0, out.stderr[-2000:]
    reported = float(out.stdout.split(":")[1].split()[0])
    assert reported == pytest.approx(metrics(run)[4]["valid/bits_per_byte"], abs=1e-4)
    a = cli("sample", str(run), "--bytes", "24", "--seed", "3", "--out", str(tmp_path / "a.bin"))
    b = cli("sample", str(run), "--bytes", "24", "--seed", "3", "--out", str(tmp_path / "b.bin"))
    assert a.returncode == 0, a.stderr[-2000:]
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    assert len((tmp_path / "a.bin").read_bytes()) == 24
    bad = cli("eval", str(tmp_path / "missing"))
    assert bad.returncode == 2 and "is not a run directory" in bad.stderr


def test_patterns_draw_shows_the_mask(tmp_path):
    """The PNG's white pixels are exactly the pattern's attended pairs."""
    out = cli("patterns", "draw", "fixed(16,4)", "--seq-len", "64", "--block", "16", "--scale", "1",
              "--out", str(tmp_path / "p.png"))
    assert out.returncode == 0, out.stderr
    pixels = np.array(Image.open(tmp_path / "p.png"))
    pos = torch.arange(64)
    assert np.array_equal(pixels == 255, P.fixed(16, 4).allows(pos[:, None], pos[None, :]).numpy())
    bad = cli("patterns", "show", "fixd(3)")
    assert bad.returncode == 2 and "unknown attention pattern" in bad.stderr


def test_config_prints_deepspeed_json(tiny_config):
    """`megastride config --deepspeed` prints the JSON the trainer would use."""
    out = cli("config", str(tiny_config()), "--deepspeed", "--world-size", "4", "--set", "train.grad_accum=2")
    assert json.loads(out.stdout)["train_batch_size"] == 2 * 2 * 4


@pytest.mark.parametrize("text,message", [
    ("", "lists no hosts"),
    ("node1 slots=2\nnode1 slots=2\n", "listed twice"),
    ("node1 slots=zero\n", "an integer from 1 to 1,024"),
    ("node1 slots=99999999999999999999999\n", "an integer from 1 to 1,024"),
    (b"node1 slots=2\xff\n", "not UTF-8 text"),
    ("node1\n", "expected 'HOST slots=N'"),
])
def test_bad_hostfiles_are_named(tmp_path, text, message):
    """Malformed hostfiles give one error naming the file and line."""
    path = tmp_path / "hostfile"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(HostfileError, match=message):
        parse_hostfile(path)
    out = subprocess.run([sys.executable, "-m", "megastride.launch.hostfile", str(path)], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1


def test_good_hostfile_parses(tmp_path):
    """Comments and blank lines are skipped; slots are read per host in order."""
    path = tmp_path / "hostfile"
    path.write_text("# cluster\nnode-1 slots=8\n\nnode-2 slots=4  # half\n")
    assert parse_hostfile(path) == {"node-1": 8, "node-2": 4}


def test_scheduler_environments_map_to_ranks():
    """mpirun and srun variables become RANK/WORLD_SIZE/LOCAL_RANK; launcher variables win."""
    ompi = {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "MASTER_ADDR": "h0"}
    assert env_from_scheduler(ompi) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h0", "MASTER_PORT": "29500"}
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "16", "SLURM_LOCALID": "3"}
    assert env_from_scheduler(slurm)["RANK"] == "3" and env_from_scheduler(slurm)["WORLD_SIZE"] == "16"
    assert env_from_scheduler({"RANK": "1", **ompi}) == {}
    assert env_from_scheduler({})["WORLD_SIZE"] == "1"


@pytest.mark.distributed
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI not installed")
def test_mpirun_two_ranks_match_one_process(tiny_config, tmp_path):
    """`mpirun -np 2 megastride train` follows the same losses as one process with the same global batch."""
    cfg = tiny_config(train={"steps": 3, "eval_every": 3})
    one = train(cfg, f"run.dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-2000:]
    cmd = ["mpirun", "-np", "2", "--allow-run-as-root", "--oversubscribe", "-x", "MASTER_ADDR=127.0.0.1",
           "-x", f"MASTER_PORT={_port()}", "-x", "OMP_NUM_THREADS=1", sys.executable, "-m", "megastride.launch.cli",
           "train", str(cfg), "--set", f"run.dir={tmp_path / 'mpi'}", "--set", "train.micro_batch_size=1"]
    two = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    a, b = metrics(tmp_path / "one"), metrics(tmp_path / "mpi")
    for step in (1, 2, 3):
        assert b[step]["train/bits_per_byte"] == pytest.approx(a[step]["train/bits_per_byte"], rel=1e-5)


def test_every_option_of_every_command_says_what_it_does(monkeypatch):
    """`--help` of each command (and each bench and prepare kind) gives every argument a line of help."""
    import argparse

    from megastride.launch import bench
    from megastride.launch import cli as C
    from megastride.launch import prepare

    parsers = []
    monkeypatch.setattr(argparse.ArgumentParser, "print_help", lambda self, file=None: parsers.append(self))
    commands = [[name] for name in C.SUBCOMMANDS] + [["bench", kind] for kind in bench.BENCHES]
    with pytest.raises(SystemExit):
        prepare.main(["--help"])
    choices = [a for a in parsers.pop()._actions if isinstance(a, argparse._SubParsersAction)][0].choices
    kinds = [name for name, sub in choices.items() if sub.prog.endswith(f" {name}")]  # not aliases (bytes: text)
    commands += [["prepare", kind] for kind in kinds]
    assert {"text", "images", "audio", "info"} <= set(kinds), kinds
    for argv in commands:
        try:
            code = C.main([*argv, "--help"])  # `bench --help` lists the benchmarks itself
        except SystemExit as done:
            code = done.code
        assert code == 0, argv
    progs = {p.prog for p in parsers}
    assert {f"megastride {' '.join(argv)}" for argv in commands if argv != ["bench"]} <= progs, progs
    silent = {p.prog: [a.option_strings[0] if a.option_strings else a.dest for a in p._actions
                       if not a.help and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
              for p in parsers}
    assert not {prog: names for prog, names in silent.items() if names}, silent
