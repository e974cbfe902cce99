"""Shared fixtures: a small real text store, a tiny training config that runs in seconds, and a runner of
code that compiles Triton kernels for a GPU without one."""

import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Without CUDA the Triton kernels run under Triton's interpreter, which must be chosen before triton is
# first imported: set here, before any test module is collected, so no module imported earlier in the
# collection (one importing triton at its top) can leave the kernels compiled for a GPU
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def slow_tests_wanted(config) -> bool:
    """Slow tests (``@pytest.mark.slow``: the rarer variants of a check the suite also makes faster) run
    with MEGASTRIDE_SLOW_TESTS=1 or when ``-m`` names them; the default suite stays under 20 minutes on
    2 cores."""
    return os.environ.get("MEGASTRIDE_SLOW_TESTS", "0") == "1" or "slow" in (config.getoption("markexpr") or "")


def pytest_collection_modifyitems(config, items):
    """GPU tests are skipped (not faked) where torch sees no CUDA device; slow tests unless asked for."""
    import torch

    if not slow_tests_wanted(config):
        slow = pytest.mark.skip(reason="slow on 2 CPU cores: MEGASTRIDE_SLOW_TESTS=1 runs it")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def compiled_lines():
    """``run(code)``: the printed lines of Python ``code`` run in a fresh process that compiles kernels (the
    interpreter tests set TRITON_INTERPRET=1 for the session, under which nothing is compiled), from a file
    (triton.jit reads a kernel's source from it); the process must exit 0."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}

    def run(code: str) -> list[str]:
        with tempfile.NamedTemporaryFile("w", suffix=".py") as f:
            f.write(code)
            f.flush()
            proc = subprocess.run([sys.executable, f.name], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        return proc.stdout.splitlines()

    return run


@pytest.fixture(scope="session")
def text_store(tmp_path_factory) -> str:
    """A bytes store of the standard library's json package (real text, ~100 KB)."""
    from megastride.data_shards import write_bytes_store

    out = tmp_path_factory.mktemp("data") / "json.zarr"
    source = Path(sysconfig.get_paths()["stdlib"]) / "json"
    return str(write_bytes_store([str(source)], out, valid_fraction=0.1, progress=False))


@pytest.fixture
def tiny_config(tmp_path, text_store):
    """Write a tiny (2-layer, d=32, 128-token) config; returns a function taking overrides."""

    def make(**sections) -> Path:
        tree = {
            "run": {"dir": str(tmp_path / "run"), "seed": 1, "progress": False},
            "data": {"path": text_store},
            "model": {"seq_len": 128, "d_model": 32, "n_layers": 2, "n_heads": 2,
                      "attention": {"block": 32, "layers": ["fixed(32,8)", "strided(32)"]}},
            "train": {"steps": 4, "micro_batch_size": 2, "lr": 3e-3, "warmup_steps": 1, "log_every": 1,
                      "eval_every": 2, "eval_windows": 4},
        }
        for section, values in sections.items():
            tree[section].update(values)
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(tree))
        return path

    return make
