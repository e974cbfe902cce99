"""launch/kernel_cache.sh: compiled kernels packed on one GPU machine and restored on the next.

Run on the CPU with stand-in cache entries: the round trip keeps what a loaded kernel reads and drops the earlier
stages and autotuning results, and a pack made under another Triton/torch/GPU, one cut short, or one over the size
cap is refused without leaving half a cache behind.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "launch" / "kernel_cache.sh"


def bash(script: str, root: Path, cwd: Path) -> str:
    env = dict(os.environ, KERNEL_CACHE_ROOT=str(root),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("TRITON_CACHE_DIR", None)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    done = subprocess.run(["bash", "-c", f"set -u; source {SCRIPT}; {script}"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def fill(root: Path, inductor_bytes: int = 1000) -> dict:
    """Stand-in entries: a Triton kernel's group, binary, metadata, PTX and TTGIR (packed), its earlier stages and an
    autotuning result (not packed); an Inductor artifact. Returns the packed ones."""
    files = {
        "triton/KEY1/__grp__k.json": b'{"child_paths": {}}',
        "triton/KEY1/k.cubin": os.urandom(3000),
        "triton/KEY1/k.ptx": b".version 8.7\n" * 200,
        "triton/KEY1/k.ttgir": b"#blocked = #ttg.blocked<{}>\n" * 100,
        "triton/KEY1/k.json": b'{"name": "k"}',
        "inductor/fxgraph/ab/entry": os.urandom(inductor_bytes),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "triton/KEY1/kernel.autotune.json").write_text('{"configs_timings": []}')
    (root / "triton/KEY1/lock").write_text("")
    for stage in ("source", "ttir", "llir"):  # compiled once, never read from a loaded kernel: not packed
        (root / f"triton/KEY1/k.{stage}").write_text(f"{stage} text\n" * 100)
    return files


def tree(root: Path) -> set:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_the_round_trip_restores_each_kernels_binary_ptx_and_ttgir_and_no_autotuning_result(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    files = fill(first)
    out = bash(f"kernel_cache_save {tmp_path}/out", first, tmp_path)
    assert "saved 1 Triton kernels (STAMP triton inductor) as 1 parts" in out, out
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["kernels.tgz.part-aa"]
    out = bash(f"kernel_cache_restore {tmp_path}/out", second, tmp_path)
    assert "restored 1 Triton kernels" in out, out
    assert tree(second) == set(files) | {"STAMP"}
    for name, data in files.items():
        assert (second / name).read_bytes() == data, name


def test_a_pack_from_another_stack_is_not_restored(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    fill(first)
    bash(f"kernel_cache_stamp() {{ echo 'triton 9.9 torch 9.9 sm (8, 0)'; }}; kernel_cache_save {tmp_path}/out",
         first, tmp_path)
    out = bash(f"kernel_cache_restore {tmp_path}/out", second, tmp_path)
    assert "not restored, made under 'triton 9.9 torch 9.9 sm (8, 0)'" in out, out
    assert tree(second) == set()


def test_a_pack_cut_short_leaves_no_half_cache(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    fill(first, inductor_bytes=20 << 20)  # random bytes do not compress: two parts of 15 MiB
    bash(f"kernel_cache_save {tmp_path}/out", first, tmp_path)
    parts = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in parts] == ["kernels.tgz.part-aa", "kernels.tgz.part-ab"]
    parts[-1].unlink()
    out = bash(f"kernel_cache_restore {tmp_path}/out", second, tmp_path)
    assert "do not unpack" in out, out
    assert tree(second) == set()


@pytest.mark.parametrize("cap, kept", [(10, "STAMP triton"), (0, None)])
def test_a_pack_over_the_cap_drops_inductors_cache_then_everything(tmp_path, cap, kept):
    first = tmp_path / "first"
    fill(first, inductor_bytes=12 << 20)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "kernels.tgz.part-ac").write_bytes(b"an older call's part")
    out = bash(f"kernel_cache_save {tmp_path}/out {cap}", first, tmp_path)
    assert "STAMP triton inductor packs to 13 MiB" in out, out
    if kept is None:
        assert "not saved (1 MiB packed, over 0)" in out, out
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["kernels.tgz.part-ac"]
        return
    assert f"({kept}) as 1 parts" in out, out
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["kernels.tgz.part-aa"]
    second = tmp_path / "second"
    bash(f"kernel_cache_restore {tmp_path}/out", second, tmp_path)
    assert not (second / "inductor").exists() or tree(second / "inductor") == set()
    assert (second / "triton/KEY1/k.cubin").read_bytes() == (first / "triton/KEY1/k.cubin").read_bytes()


def test_a_triton_cache_over_the_cap_packs_its_smallest_kernels_whole(tmp_path):
    """When even Triton's share does not fit, the smallest kernels go, each with all its packed files, as many as
    the cap holds; the next machine restores exactly those."""
    first, second = tmp_path / "first", tmp_path / "second"
    fill(first, inductor_bytes=1000)
    sizes = {"K1MB": 1, "K2MB": 2, "K3MB": 3, "K4MB": 4}  # random bytes do not compress
    for key, mib in sizes.items():
        (first / "triton" / key).mkdir(parents=True)
        (first / "triton" / key / f"__grp__{key}.json").write_text('{"child_paths": {}}')
        (first / "triton" / key / f"{key}.cubin").write_bytes(os.urandom(mib << 20))
        (first / "triton" / key / f"{key}.ttir").write_bytes(os.urandom(3 << 20))  # not packed, not counted
    out = bash(f"kernel_cache_save {tmp_path}/out 7", first, tmp_path)
    assert "STAMP triton packs to 11 MiB, over 7" in out, out
    assert "saved 4 Triton kernels (STAMP, 4 of 5 Triton kernels, the smallest) as 1 parts, 7 MiB" in out, out
    out = bash(f"kernel_cache_restore {tmp_path}/out", second, tmp_path)
    assert "restored 4 Triton kernels" in out, out
    assert tree(second) == {"STAMP", "triton/KEY1/__grp__k.json", "triton/KEY1/k.cubin", "triton/KEY1/k.ptx",
                            "triton/KEY1/k.ttgir", "triton/KEY1/k.json"} | {
        f"triton/{key}/{name}" for key in ("K1MB", "K2MB", "K3MB") for name in (f"__grp__{key}.json", f"{key}.cubin")}
    assert (second / "triton/K3MB/K3MB.cubin").read_bytes() == (first / "triton/K3MB/K3MB.cubin").read_bytes()
