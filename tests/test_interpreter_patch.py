"""The suite's speed-up of Triton's interpreter (conftest.py): a ``@triton.jit`` helper called inside a kernel
reuses the launch's patch of ``triton.language`` instead of making its own, the results are the same, and the
language is left as it was after the launch."""

import inspect
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs under Triton's interpreter")

triton = pytest.importorskip("triton")
tl = triton.language


@triton.jit
def _twice(x):
    return x * 2


@triton.jit
def _doubled_three_times(X, Y, N: tl.constexpr):
    offs = tl.arange(0, N)
    x = tl.load(X + offs)
    for _ in range(3):
        x = _twice(x)
    tl.store(Y + offs, x)


@triton.jit
def _times_eight(X, Y, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(Y + offs, tl.load(X + offs) * 8)


def test_a_helper_uses_the_launchs_patch_and_the_language_is_restored(monkeypatch):
    from triton.runtime import interpreter

    scans = []
    getmembers = inspect.getmembers
    monkeypatch.setattr(interpreter.inspect, "getmembers", lambda obj, *a: (scans.append(obj), getmembers(obj, *a))[1])
    before = {name: getattr(tl, name) for name in ("load", "store", "arange")}
    x = torch.arange(16, dtype=torch.float32)
    outputs = []
    for kernel in (_times_eight, _doubled_three_times):
        scans.clear()
        y = torch.empty_like(x)
        kernel[(2,)](x, y, N=16)  # two programs: the helper runs six times
        outputs.append((y, len(scans)))
    (plain, plain_scans), (helped, helped_scans) = outputs
    assert torch.equal(plain, 8 * x) and torch.equal(helped, 8 * x)
    assert plain_scans > 0 and helped_scans == plain_scans, (plain_scans, helped_scans)
    assert all(getattr(tl, name) is f for name, f in before.items())
