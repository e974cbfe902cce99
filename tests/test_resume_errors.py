"""Resuming and interrupting `megastride train`: a changed setting the checkpoint fixes, a damaged
checkpoint, nothing left to train are one line before anything in the run dir is written; a metrics line
cut off by a kill is dropped; SIGINT and SIGTERM save a checkpoint that resumes exactly (found by an audit
of resume and interrupt, 2026-12-06)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from megastride.engine import checkpoint as ckpt
from megastride.engine.curves import read_curve
from megastride.engine.metrics import MetricsWriter
from megastride.engine.trainer import StopSignals
from megastride.launch.train import main as train_main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ROOT = Path(__file__).resolve().parents[1]
STEPS = 4  # the trained run's checkpoint


def write_config(path: Path, run_dir: Path, data: str, **sections) -> Path:
    """A 1-layer, d=32, 128-token config (a step takes milliseconds) with ``sections``' keys over it."""
    tree = {
        "run": {"dir": str(run_dir), "seed": 0, "progress": False},
        "data": {"path": data},
        "model": {"seq_len": 128, "d_model": 32, "n_layers": 1, "n_heads": 2,
                  "attention": {"block": 16, "layers": ["fixed(32,8)"]}},
        "train": {"steps": STEPS, "micro_batch_size": 2, "lr": 2e-3, "warmup_steps": 1, "log_every": 1,
                  "eval_every": STEPS, "eval_windows": 2},
    }
    for section, values in sections.items():
        tree[section].update(values)
    path.write_text(yaml.safe_dump(tree))
    return path


def train_cmd(config: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "megastride.launch.cli", "train", str(config),
            *[a for o in overrides for a in ("--set", o)]]


def train(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(config, *overrides), capture_output=True, text=True, timeout=300, env=ENV)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_store) -> Path:
    """A real run trained for STEPS steps (its checkpoint at step STEPS), made once for the module."""
    root = tmp_path_factory.mktemp("trained")
    proc = train(write_config(root / "tiny.yaml", root / "run", text_store))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


@pytest.fixture
def run_copy(trained, text_store, tmp_path):
    """(a copy of the trained run, a config training it on) for a test to resume or damage."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run, write_config(tmp_path / "tiny.yaml", run, text_store)


def snapshot(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(argv: list[str], capsys) -> str:
    """The one error line `megastride train argv` ends with (exit status 2), run in this process: the checks
    come before DeepSpeed starts."""
    with pytest.raises(SystemExit) as exit_:
        train_main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("megastride train: error: ") and "\n" not in err, err
    return err


def metrics_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("overrides, words", [
    (["run.seed=1"], "trained with run.seed=0; this config has run.seed=1"),
    (["data.train_split=valid", "data.valid_split=train"],
     "trained with data.train_split=train; this config has data.train_split=valid"),
    (["train.lr=0.1"], "trained with train.lr=0.002; this config has train.lr=0.1 (the checkpoint's optimizer "
                       "state would silently override it)"),
    (["train.zero_stage=3"], "trained with train.zero_stage=0; this config has train.zero_stage=3"),
    (["model.n_heads=4"], "trained with model.n_heads=2; this config has model.n_heads=4"),
])
def test_a_changed_setting_the_checkpoint_fixes_is_one_line_before_anything_is_written(overrides, words, run_copy,
                                                                                        capsys):
    """Resuming with a seed, split, optimizer setting, ZeRO layout or model setting other than the checkpoint's:
    one line naming the setting and both values, exit 2, and config.yaml (the record of what the checkpoint
    was trained with) and every other file as they were."""
    run, config = run_copy
    before = snapshot(run)
    err = one_line_error([str(config), "--set", "train.steps=6", *[a for o in overrides for a in ("--set", o)]],
                         capsys)
    assert f"run.dir {run} holds a checkpoint ({ckpt.tag_for(STEPS)}) {words}" in err, err
    assert err.endswith("use a new run.dir, or the same value to resume"), err
    assert snapshot(run) == before


def test_settings_that_may_change_on_resume_resume(run_copy, text_store, tmp_path):
    """train.steps, the log/eval/save cadence, dropout and a moved store (data.path) may change: the run resumes
    from its checkpoint and config.yaml records the new values."""
    run, config = run_copy
    moved = tmp_path / "moved.zarr"
    shutil.copytree(text_store, moved)
    proc = train(config, "train.steps=6", "train.log_every=2", "train.eval_every=3", "train.save_every=5",
                 "model.dropout=0.1", f"data.path={moved}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert metrics_steps(run) == [1, 2, 3, 4, 4, 6, 6]  # steps 1-4 and step 4's evaluation, then the resumed 6
    assert (run / "checkpoints" / "latest").read_text() == ckpt.tag_for(6)
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["path"] == str(moved)


def test_a_store_the_data_position_does_not_fit_is_one_line_and_nothing_is_written(run_copy, tmp_path):
    """data.path may move, but a store of another size cannot continue the checkpoint's data position: one line
    (not the loader's traceback), exit 2, and the run dir as it was (the checkpoint loads before it is written)."""
    import sysconfig

    from megastride.data_shards import write_bytes_store

    run, config = run_copy
    other = write_bytes_store([str(Path(sysconfig.get_paths()["stdlib"]) / "email")], tmp_path / "other.zarr",
                              valid_fraction=0.1, progress=False)
    before = snapshot(run)
    proc = train(config, "train.steps=6", f"data.path={other}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = [line for line in proc.stderr.splitlines() if not line.startswith(("[", "DeepSpeed"))]
    assert len(err) == 1 and err[0].startswith("megastride train: error: the checkpoint in "), proc.stderr[-3000:]
    assert "does not go on in this data" in err[0] and "units_per_epoch" in err[0], err
    assert snapshot(run) == before


@pytest.mark.parametrize("damage, words", [
    ("latest names a missing folder", "checkpoints/latest names 'step00000099', which is not a folder in"),
    ("latest is empty", "checkpoints/latest is empty (a save cut off?)"),
    ("rng file cut off", "checkpoint file {tag}/rng_rank0.pt is cut off or corrupt"),
    ("model states cut off", "checkpoint file {tag}/mp_rank_00_model_states.pt is cut off or corrupt"),
    ("model states missing", "checkpoint {tag} holds no model states"),
])
def test_a_damaged_checkpoint_is_one_line_and_nothing_is_deleted(damage, words, run_copy, capsys):
    """A `latest` naming no folder or empty, a checkpoint file cut off mid-write or missing: one line naming the
    file and what is wrong, exit 2, before DeepSpeed starts, and every file as it was."""
    run, config = run_copy
    tag = run / "checkpoints" / ckpt.tag_for(STEPS)
    if damage.startswith("latest"):
        (run / "checkpoints" / "latest").write_text("step00000099\n" if "missing" in damage else "")
    elif damage == "model states missing":
        (tag / "mp_rank_00_model_states.pt").unlink()
    else:
        path = tag / ("rng_rank0.pt" if "rng" in damage else "mp_rank_00_model_states.pt")
        path.write_bytes(path.read_bytes()[:300])
    before = snapshot(run)
    err = one_line_error([str(config), "--set", "train.steps=6"], capsys)
    assert words.format(tag=tag) in err, err
    fix = (f"can name a complete one instead ({ckpt.tag_for(STEPS)}), or pick a new run.dir"
           if damage.startswith("latest") else "no other checkpoint there is complete: pick a new run.dir")
    assert err.endswith(fix), err
    assert snapshot(run) == before


@pytest.mark.parametrize("steps", [STEPS, 2])
def test_nothing_left_to_train_is_one_line_and_config_untouched(steps, run_copy, capsys):
    """train.steps at or below the step the checkpoint reached: one line saying so (exit 2), not a run that
    trains nothing, prints "validation n/a" and rewrites config.yaml with the smaller steps."""
    run, config = run_copy
    before = snapshot(run)
    err = one_line_error([str(config), "--set", f"train.steps={steps}"], capsys)
    assert err == (f"megastride train: error: run.dir {run} is already at step {STEPS} >= train.steps={steps}: "
                   "nothing to train (raise train.steps to continue)")
    assert snapshot(run) == before


def test_a_metrics_line_cut_off_by_a_kill_is_dropped_on_resume(run_copy):
    """A run killed after its checkpoint logged a step past it and was cut off mid-line: the resumed run drops
    the cut line and the discarded step's line, so metrics.jsonl stays JSON lines with each step once and
    `megastride curves` reads it whole."""
    run, config = run_copy
    metrics = run / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write(json.dumps({"step": 5, "train/bits_per_byte": 1.0}) + "\n" + '{"step": 6, "train/bits_per')
    proc = train(config, "train.steps=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert metrics_steps(run) == [1, 2, 3, 4, 4, 5, 6, 6]
    curve = read_curve(run)
    assert curve.note == "" and sorted(curve.train) == list(range(1, 7)) and curve.train[5] != 1.0


def test_metrics_writer_keeps_whole_lines_up_to_the_resumed_step(tmp_path):
    """MetricsWriter's open on resume: whole lines up to the step stay byte for byte (a line that is not a metrics
    line too), later steps' lines and a cut-off last line go; a fresh file is left alone."""
    lines = ['{"step": 1, "a": 1}\n', 'not json, kept\n', '{"step": 2, "a": 2}\n', '{"step": 3, "a": 3}\n']
    (tmp_path / "metrics.jsonl").write_text("".join(lines) + '{"step": 4, "a"')
    writer = MetricsWriter(tmp_path, tmp_path / "tb", enabled=True, step=2)
    writer.scalars(3, {"a": 30.0})
    writer.close()
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(lines[:3]) + '{"step": 3, "a": 30.0}\n'
    # what went is kept beside it, the cut-off line ended: nothing the killed run wrote is lost
    assert (tmp_path / "metrics.dropped.jsonl").read_text() == lines[3] + '{"step": 4, "a"\n'


def wait_for_step(metrics: Path, after: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until ``metrics`` logs a step past ``after`` (the run is in its loop), or fail."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if metrics.exists() and any(s > after for s in metrics_steps_tolerant(metrics)):
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no step past {after} in {metrics} after {timeout} s")


def metrics_steps_tolerant(metrics: Path) -> list[int]:
    return [json.loads(line)["step"] for line in metrics.read_text().split("\n")[:-1]]


def interrupt(cmd: list[str], metrics: Path, after: int, sig: int) -> tuple[int, str]:
    """Start ``cmd``, send ``sig`` once it logs a step past ``after``; (exit status, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        wait_for_step(metrics, after, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


@pytest.fixture
def sigint_handled():
    """SIGINT handled, not ignored, in this process and the processes it starts (an exec resets a handler to the
    default but keeps an ignored signal ignored): a shell that starts pytest in the background hands SIGINT down
    ignored, and StopSignals rightly leaves an ignored signal alone."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


@pytest.mark.usefixtures("sigint_handled")
def test_sigint_and_sigterm_save_a_checkpoint_that_the_same_command_resumes_exactly(text_store, tmp_path):
    """Ctrl-C (SIGINT) mid-run saves a checkpoint at the next step boundary, says so in one line and exits 130;
    the same command resumes from it, and SIGTERM (a preemption) does the same with 143; resumed to the end,
    the losses are those of a run never interrupted."""
    long = dict(train={"steps": 100000, "eval_every": 100000})
    config = write_config(tmp_path / "long.yaml", tmp_path / "run", text_store, **long)
    cmd, metrics = train_cmd(config), tmp_path / "run" / "metrics.jsonl"
    stopped = []
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        rc, err = interrupt(cmd, metrics, stopped[-1] if stopped else 0, sig)
        assert rc == code, err[-3000:]
        step = ckpt.step_of((tmp_path / "run" / "checkpoints" / "latest").read_text())
        lines = [line for line in err.splitlines() if "interrupt" in line or "Traceback" in line]
        assert lines == [f"interrupted by {signal.Signals(sig).name} at step {step}: checkpoint saved to "
                         f"{tmp_path / 'run' / 'checkpoints' / ckpt.tag_for(step)}; run the same command to resume"]
        assert metrics_steps(tmp_path / "run") == list(range(1, step + 1))  # resumed: each step once
        stopped.append(step)
    assert stopped[1] > stopped[0]
    resumed = train(config, "run.stop_after=2")  # the same command, two steps more
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = train(write_config(tmp_path / "whole.yaml", tmp_path / "whole", text_store, **long),
                  f"run.stop_after={stopped[1] + 2}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    a, b = (read_curve(tmp_path / name).train for name in ("whole", "run"))
    assert sorted(b) == list(range(1, stopped[1] + 3))
    assert b == a


@pytest.mark.usefixtures("sigint_handled")
def test_stop_signals_flag_the_first_signal_and_give_back_the_handlers():
    """StopSignals: the first SIGINT only sets the flag, a second one is the previous handler's (Ctrl-C twice
    still ends the process); SIGTERM likewise; every handler is restored on exit; nothing is installed outside
    the main thread or over an ignored signal."""
    before = {s: signal.getsignal(s) for s in StopSignals.SIGNALS}
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGINT  # the first signal decides the exit status
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in StopSignals.SIGNALS} == before

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with StopSignals():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before[signal.SIGTERM])
    seen = []
    thread = threading.Thread(target=lambda: seen.append(StopSignals().__enter__()._previous))
    thread.start()
    thread.join()
    assert seen == [{}] and {s: signal.getsignal(s) for s in StopSignals.SIGNALS} == before


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_a_signal_to_one_of_two_ranks_stops_both_at_the_same_step(text_store, tmp_path):
    """SIGTERM to rank 1 alone (2 gloo ranks under the deepspeed launcher): the ranks agree at the next step
    boundary, both save that step's checkpoint (each its RNG file) and exit 143; none hangs in a collective."""
    import psutil

    config = write_config(tmp_path / "long.yaml", tmp_path / "run", text_store,
                          train={"steps": 100000, "eval_every": 100000})
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(_port()),
           str(ROOT / "launch" / "train.py"), str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        wait_for_step(tmp_path / "run" / "metrics.jsonl", 0, proc)
        rank1 = [p for p in psutil.Process(proc.pid).children(recursive=True)
                 if "--local_rank=1" in p.cmdline()]
        assert len(rank1) == 1, rank1
        rank1[0].send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out[-3000:]
    step = ckpt.step_of((tmp_path / "run" / "checkpoints" / "latest").read_text())
    folder = tmp_path / "run" / "checkpoints" / ckpt.tag_for(step)
    assert {"mp_rank_00_model_states.pt", "rng_rank0.pt", "rng_rank1.pt"} <= {p.name for p in folder.iterdir()}
    assert [line for line in out.splitlines() if line.startswith("interrupted")] == [
        f"interrupted by SIGTERM at step {step}: checkpoint saved to {folder}; run the same command to resume"]
    assert metrics_steps(tmp_path / "run")[-1] == step
