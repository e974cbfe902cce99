"""Wrong inputs the CLI audit of 2026-12-06 found giving tracebacks, hangs, misleading messages or lost data: each is
now one line naming the problem, exit status 2, with nothing already written touched."""

import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from megastride.data_shards import build_loader, write_image_store
from megastride.engine.config import ConfigError, load_config
from megastride.engine.inference import check_eval_data
from megastride.launch.hostfile import HostfileError, parse_hostfile

from test_cli_errors import one_line, run, trained  # noqa: F401 - trained: a fixture used here

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def images(tmp_path):
    """``make(shape)``: an image store of 20 random images of ``shape`` (H, W, C), 4 of them the valid split."""

    def make(shape) -> str:
        name = "x".join(map(str, shape))
        np.save(tmp_path / f"{name}.npy", np.random.default_rng(0).integers(0, 256, (20, *shape), dtype=np.uint8))
        return write_image_store([str(tmp_path / f"{name}.npy")], tmp_path / f"{name}.zarr", valid_fraction=0.2,
                                 progress=False)

    return make


# --- eval -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 16, 1), (4, 4, 3)])  # 128 bytes (the run's seq_len) and 48
def test_eval_refuses_an_image_store_for_a_byte_model(shape, trained, images, capsys):  # noqa: F811
    """An image store is named as the wrong kind for the run's byte model, whatever its images' size (a 128-byte
    image was scored at 8.01 bits per byte; a 48-byte one blamed seq_len)."""
    code, err = run("evaluate", [str(trained), "--data", images(shape), "--device", "cpu"], capsys)
    one_line(code, err, "eval", "holds images but the run's model reads bytes (model.embedding.kind=window)")


def test_eval_check_names_images_of_another_shape(tiny_config, images):
    """An image model evaluated on images of the same byte count but another shape: named, not scored."""
    cfg = load_config(tiny_config(model={"embedding": {"kind": "image", "image_shape": [8, 16, 1]}}))
    check_eval_data(cfg, images((8, 16, 1)), "valid")
    with pytest.raises(ConfigError, match=r"holds 16x8x1 images but the run's model reads 8x16x1"):
        check_eval_data(cfg, images((16, 8, 1)), "valid")


@pytest.mark.parametrize("flag", ["--split", "--data"])
def test_eval_refuses_an_empty_name(flag, trained, capsys):  # noqa: F811
    """``--split ""`` (or ``--data ""``) is not the run's own split silently."""
    code, err = run("evaluate", [str(trained), flag, "", "--device", "cpu"], capsys)
    one_line(code, err, "eval", f"{flag} is empty")


# --- sample -----------------------------------------------------------------------------------------------------

def test_sample_at_a_tiny_temperature_draws_the_most_likely_bytes(trained, tmp_path, capsys):  # noqa: F811
    """--temperature 1e-300 was inf/nan probabilities; it now draws what temperature 0 (greedy) does."""
    for temperature, seed, name in (("0", "0", "greedy.bin"), ("1e-300", "5", "tiny.bin")):
        code, err = run("sample", [str(trained), "--bytes", "6", "--temperature", temperature, "--seed", seed,
                                   "--out", str(tmp_path / name)], capsys)
        assert code == 0, err
    assert (tmp_path / "tiny.bin").read_bytes() == (tmp_path / "greedy.bin").read_bytes()


def test_sample_takes_a_prompt_that_is_not_utf8(trained, capsys):  # noqa: F811
    """A prompt byte that is not UTF-8 (argv holds it as a surrogate) goes to the model as the byte it was."""
    from megastride.launch.sample import main

    assert main([str(trained), "--bytes", "2", "--prompt", os.fsdecode(b"caf\xe9")]) == 0
    assert capsys.readouterr().out.startswith("caf\ufffd")  # printed as UTF-8 text, the byte replaced


def test_sample_continues_a_prompt_files_raw_bytes(trained, tmp_path, monkeypatch, capsys):  # noqa: F811
    """--prompt-file hands the model the file's bytes, all 256 values as they are; the continuation alone is
    printed (the file is not echoed) and it is the one --prompt with the same bytes gives."""
    from megastride.engine import inference
    from megastride.launch.sample import main

    seen, real = [], inference.sample
    monkeypatch.setattr(inference, "sample", lambda model, prompt, *a: seen.append(prompt) or real(model, prompt, *a))
    raw = bytes(range(256)) + b"\x00\xff"
    (tmp_path / "p.bin").write_bytes(raw)
    assert main([str(trained), "--bytes", "5", "--seed", "2", "--prompt-file", str(tmp_path / "p.bin")]) == 0
    from_file = capsys.readouterr().out
    assert seen == [raw] and len(from_file) <= 6  # 5 bytes and a newline, not the file's 258
    text = b"caf\xe9 au lait"
    (tmp_path / "t.bin").write_bytes(text)
    common = [str(trained), "--bytes", "5", "--seed", "2"]
    assert main([*common, "--prompt-file", str(tmp_path / "t.bin"), "--out", str(tmp_path / "f.out")]) == 0
    assert main([*common, "--prompt", os.fsdecode(text), "--out", str(tmp_path / "p.out")]) == 0
    assert seen[1:] == [text, text] and (tmp_path / "f.out").read_bytes() == (tmp_path / "p.out").read_bytes()


def test_sample_keeps_an_existing_out_file(trained, tmp_path, capsys):  # noqa: F811
    """--out of an existing file is refused, the file kept, unless --force."""
    keep = tmp_path / "keep.yaml"
    keep.write_text("mine")
    code, err = run("sample", [str(trained), "--bytes", "4", "--out", str(keep)], capsys)
    one_line(code, err, "sample", f"--out {keep} exists: pass --force to replace it")
    assert keep.read_text() == "mine"
    code, err = run("sample", [str(trained), "--bytes", "4", "--out", str(keep), "--force"], capsys)
    assert code == 0 and len(keep.read_bytes()) == 4, err


# --- hostfiles and launch scripts -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("node1 slots = 8\n", "write 'slots=8' with no spaces around '='"),
    ("node1 slots=\u00b2\n", "an integer from 1 to 1,024, got '\u00b2'"),  # '²'.isdigit(), but not int('²')
    ("node1 slots=\u0663\n", "an integer from 1 to 1,024"),  # an Arabic-Indic 3: ASCII digits only
])
def test_hostfile_refuses_what_deepspeed_refuses(tmp_path, text, message):
    """Lines DeepSpeed's parser rejects ("Hostfile contains a bad entry") are refused here too, in one line."""
    path = tmp_path / "hostfile"
    path.write_text(text)
    with pytest.raises(HostfileError, match=message):
        parse_hostfile(path)


@pytest.mark.parametrize("text", ["node-1 slots=8\n", "  node1\tslots=3  \n", "node1 slots=4  # half\n",
                                  "# rack 1\nnode1 slots=08\n\nnode2  slots=2\n"])
def test_hostfiles_accepted_are_read_the_same_by_deepspeed(tmp_path, text):
    """What passes the check, DeepSpeed's own parser reads to the same hosts and slots."""
    from deepspeed.launcher.runner import _parse_hostfile

    path = tmp_path / "hostfile"
    path.write_text(text)
    assert parse_hostfile(path) == dict(_parse_hostfile(path.read_text().splitlines(keepends=True)))


@pytest.fixture
def launchers(tmp_path):
    """``run(script, *args, env=...)``: a launch script run with fake mpirun and deepspeed first on PATH (each leaves
    a file `launched` if called) and no virtual environment on it; (exit status, stderr lines)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name in ("mpirun", "deepspeed"):
        (bin_ / name).write_text(f"#!/bin/sh\ntouch {tmp_path / 'launched'}\n")
        (bin_ / name).chmod(0o755)

    def go(script: str, *args: str, env: dict | None = None) -> tuple[int, list[str]]:
        base = {"PATH": f"{bin_}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
        proc = subprocess.run(["bash", str(ROOT / "launch" / script), *args], capture_output=True, text=True,
                              env={**base, **(env or {})}, timeout=120, cwd=tmp_path)
        assert not (tmp_path / "launched").exists()
        return proc.returncode, [x for x in proc.stderr.splitlines() if not x.startswith("[")]

    return go


@pytest.mark.parametrize("nprocs", ["0", "-1", "2x", ""])
def test_mpirun_refuses_a_rank_count_under_one(nprocs, launchers):
    """`mpirun -np 0` would start a rank on every slot: NPROCS is an integer of at least 1, before mpirun."""
    code, err = launchers("mpirun.sh", nprocs, str(ROOT / "configs" / "tiny.yaml"))
    assert code == 2 and len(err) == 1 and f"NPROCS must be an integer of at least 1, got '{nprocs}'" in err[0]


@pytest.mark.parametrize("script, first", [("mpirun.sh", "2"), ("multinode.sh", "hostfile")])
def test_launch_scripts_check_the_config_exists(script, first, launchers, tmp_path):
    """A CONFIG that is no file is named before anything is launched."""
    (tmp_path / "hostfile").write_text("node1 slots=2\n")
    code, err = launchers(script, first, "missing.yaml")
    assert code == 2 and len(err) == 1 and "config missing.yaml is not a file" in err[0]


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="no .venv in this checkout")
def test_multinode_finds_the_checkouts_python_without_an_activated_venv(launchers, tmp_path):
    """With no venv on PATH the checks run under the checkout's .venv (python3 from PATH died importing
    megastride); a bad hostfile or config key is one line, and deepspeed never starts."""
    (tmp_path / "hostfile").write_text("node1 slots = 8\n")
    code, err = launchers("multinode.sh", "hostfile", str(ROOT / "configs" / "tiny.yaml"))
    assert code == 2 and err == [f"hostfile: error: hostfile:1: write 'slots=8' with no spaces around '=' "
                                 f"(DeepSpeed's launcher refuses 'node1 slots = 8')"]
    (tmp_path / "hostfile").write_text("node1 slots=8\n")
    code, err = launchers("multinode.sh", "hostfile", str(ROOT / "configs" / "tiny.yaml"), "--set", "model.nope=1")
    assert code == 2 and len(err) == 1 and "model.nope: unknown key" in err[0]
    code, err = launchers("multinode.sh", "hostfile", str(ROOT / "configs" / "tiny.yaml"), env={"PYTHON": "/bin/false"})
    assert code == 2 and err == [f"{ROOT / 'launch' / 'multinode.sh'}: error: /bin/false cannot import megastride "
                                 "and deepspeed (activate their environment or set PYTHON)"]


# --- curves, bench ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_curves_refuses_a_reference_line_at_no_height(value, tmp_path, capsys):
    """--line a=inf was an OverflowError while drawing; now one line before anything is read or drawn."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/bits_per_byte": 7.0}\n')
    code, err = run("curves", [str(tmp_path), "--line", f"a={value}", "--out", str(tmp_path / "a.png")], capsys)
    one_line(code, err, "curves", f"expected LABEL=BITS with BITS a finite number, e.g. histogram=7.48, "
                                  f"got 'a={value}'")
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize("batch", ["0", "-2"])
def test_bench_scaling_refuses_a_batch_under_one(batch, tmp_path, capsys):
    """--batch 0 silently took the config's batch and -2 failed mid-sweep: both refused before anything runs."""
    out = tmp_path / "scaling"
    code, err = run("bench_scaling", ["--device", "cpu", "--quick", "--batch", batch, "--out", str(out)], capsys)
    one_line(code, err, "bench scaling", f"--batch must be a finite number at least 1, got {batch}")
    assert not out.exists()


def test_loader_close_ends_its_prefetch_thread(text_store):
    """close() waits for the prefetch thread: a daemon thread freeing a batch at interpreter exit aborted
    `bench data --workdir` ("terminate called without an active exception", exit 134) in about 1 run of 8."""
    ld = build_loader(text_store, seq_len=512, micro_batch_size=8, prefetch=2)
    for _ in range(3):
        next(ld)
    ld.close()
    assert not [t for t in threading.enumerate() if t.name.startswith(("megastride-prefetch", "megastride-read"))]


def test_bench_data_refuses_a_workdir_of_other_things(text_store, tmp_path, capsys):
    """--workdir of a zarr store, or of a user's files, is refused with nothing written into it; a new folder, and
    then the same folder again (a previous bench's), are taken."""
    store = tmp_path / "store.zarr"
    shutil.copytree(text_store, store)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    small = ["--data", "random", "--size-mb", "0.05", "--lengths", "1024", "--batch-mb", "0.01", "--seconds", "0.01",
             "--no-remote", "--quiet"]
    code, err = run("bench_data", [*small, "--workdir", str(store)], capsys)
    one_line(code, err, "bench data", f"--workdir {store} is a zarr store: give a new or empty folder")
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, err = run("bench_data", [*small, "--workdir", str(mine)], capsys)
    one_line(code, err, "bench data", f"--workdir {mine} holds other files than a previous bench's (notes.txt)")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    for _ in range(2):
        code, err = run("bench_data", [*small, "--workdir", str(tmp_path / "bench")], capsys)
        assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "bench").iterdir()) == ["bench.raw", "bench.zarr"]


@pytest.mark.parametrize("module, prog", [("bench_attention", "bench attention"), ("bench_tiles", "bench tiles")])
def test_gpu_benches_check_their_out_folder_before_the_gpu(module, prog, tmp_path, capsys):
    """An --out that is a file is named before the GPU check (and so before any case is timed), GPU or none."""
    (tmp_path / "file.txt").write_text("mine")
    for out, message in ((tmp_path / "file.txt", "is a file, not a folder"),
                         (tmp_path / "file.txt" / "sub", f"{tmp_path / 'file.txt'} is a file, not a folder")):
        code, err = run(module, ["--out", str(out)], capsys)
        one_line(code, err, prog, f"--out {out}")
        assert message in err
    assert (tmp_path / "file.txt").read_text() == "mine"


# --- messages that named the wrong thing ------------------------------------------------------------------------

def test_stats_names_the_seed_flag(text_store, capsys):
    """A negative --seed was reported as a problem of STORE; an int too large for a float was an OverflowError."""
    code, err = run("stats", [text_store, "--seed", "-1"], capsys)
    one_line(code, err, "stats", "--seed must be a finite number at least 0, got -1")
    code, err = run("stats", [text_store, "--seq-len", "-" + "9" * 400], capsys)
    one_line(code, err, "stats", "--seq-len must be a finite number at least 1, got -999")


def test_prepare_says_which_split_would_be_empty(tmp_path, capsys):
    """Every source tagged valid= leaves the train split empty; the sources themselves are not."""
    (tmp_path / "h.txt").write_text("hello " * 100)
    code, err = run("prepare", ["text", f"valid={tmp_path / 'h.txt'}", "--out", str(tmp_path / "o.zarr"), "--quiet"],
                    capsys)
    one_line(code, err, "prepare", "no training data: the train split would be empty, every source is tagged valid=")
    assert not (tmp_path / "o.zarr").exists()


def test_prepare_names_a_source_that_is_not_a_regular_file(tmp_path, capsys):
    """A FIFO named as a source is not a regular file (it exists); one inside a source folder is left out, not
    read (which would wait for a writer forever)."""
    os.mkfifo(tmp_path / "fifo1")
    code, err = run("prepare", ["text", str(tmp_path / "fifo1"), "--out", str(tmp_path / "o.zarr")], capsys)
    one_line(code, err, "prepare", "source '" + str(tmp_path / "fifo1") + "' is not a regular file or folder")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("hello " * 100)
    os.mkfifo(folder / "fifo2")
    code, err = run("prepare", ["text", str(folder), "--out", str(tmp_path / "o.zarr"), "--quiet",
                                "--valid-fraction", "0"], capsys)
    assert code == 0, err
    assert stat.S_ISFIFO(os.stat(folder / "fifo2").st_mode)


def test_a_store_without_its_train_metadata_is_named(text_store, tmp_path, capsys):
    """A store whose train/zarr.json is gone names that file, not `cannot open array 'train': 'train'`."""
    broken = tmp_path / "broken.zarr"
    shutil.copytree(text_store, broken)
    (broken / "train" / "zarr.json").unlink()
    code, err = run("stats", [str(broken), "--seq-len", "100", "--windows", "2"], capsys)
    one_line(code, err, "stats", f"cannot open array 'train': its metadata {broken}/train/zarr.json is missing")


def test_bench_names_an_unknown_kind(capsys):
    """`megastride bench foo` says what is wrong, in one line, not only the usage."""
    code, err = run("bench", ["foo"], capsys)
    assert code == 2
    assert err == "megastride bench: error: unknown bench kind 'foo' (choose from attention, tiles, data, scaling)"


def test_config_refuses_a_duplicated_key(tmp_path):
    """A section given twice is an error naming it and both lines, not the first silently dropped; a key
    repeated inside a section too; YAML merges ("<<:") still override as YAML defines."""
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump({"train": {"steps": 5}}) + yaml.safe_dump({"train": {"lr": 0.1}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:3: key 'train' given twice (first on line 1)"
    path.write_text("train:\n  steps: 5\n  lr: 0.1\n  steps: 6\n")
    with pytest.raises(ConfigError, match=r":4: key 'steps' given twice \(first on line 2\)"):
        load_config(path)
    path.write_text("base: &b\n  steps: 5\n  lr: 0.1\ntrain:\n  <<: *b\n  steps: 7\n")
    with pytest.raises(ConfigError, match="unknown section|base"):  # the merge itself loads: only 'base' is refused
        load_config(path)
