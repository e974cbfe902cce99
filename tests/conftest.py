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


def _patch_the_language_once_a_launch():
    """Triton 3.6's interpreter patches ``triton.language`` (``inspect.getmembers`` over it and its tensor,
    ~1.5 ms) at each launch, and again at every call of a ``@triton.jit`` helper inside the kernel, though
    the launch's patch is still in place: the repeats, which change nothing, are about a fifth of an interpreter
    test's time. Here a helper's call skips the repeat where the running launch has patched every language
    module the helper sees; the launch's own patch (and its restore) is Triton's, unchanged."""
    import inspect

    import triton.language as tl
    from triton.runtime import interpreter

    if not all(hasattr(interpreter, name) for name in ("_patch_lang", "GridExecutor", "_LangPatchScope")):
        return  # another Triton than setup_cpu.sh's 3.6.0: its interpreter as it is (test_interpreter_patch says so)
    patch, launch = interpreter._patch_lang, interpreter.GridExecutor.__call__
    running: list = []  # per running launch: the language modules its kernel's patch covered (None: not yet)

    seen: dict = {}  # function -> the language modules in its globals (as Triton's patch finds them)

    def langs(fn) -> frozenset:
        if fn not in seen:
            seen[fn] = frozenset(id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core))
        return seen[fn]

    def patch_lang(fn):
        if running and running[-1] is None:  # the launch's own patch
            running[-1] = langs(fn)
            return patch(fn)
        if running and langs(fn) <= running[-1]:
            return interpreter._LangPatchScope()  # nothing to restore: the launch's patch covers it
        return patch(fn)

    def launch_once(self, *args, **kwargs):
        running.append(None)
        try:
            return launch(self, *args, **kwargs)
        finally:
            running.pop()

    interpreter._patch_lang, interpreter.GridExecutor.__call__ = patch_lang, launch_once


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_the_language_once_a_launch()


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
