"""engine.memtrace: replaying the CUDA allocator's recorded history to its peak (no GPU needed: the
snapshots here are written by hand in the format of ``torch.cuda.memory._snapshot``)."""

import json

import pytest

from megastride.engine import bench_scaling as B
from megastride.engine.memtrace import block_bytes, call_site, peak_report
from megastride.launch.bench_scaling import main as bench_main

MB = 1 << 20


def frames(*where):
    """Innermost first, as the allocator records them."""
    return [{"filename": f, "line": line, "name": name} for f, line, name in where]


MODEL = ("/work/checkout/engine/model.py", 120, "forward")  # an editable install: the checkout's own path
ATTN = ("/venv/lib/python3.11/site-packages/megastride/kernels/blocksparse.py", 1400, "backward_part")
TORCH = ("/venv/lib/python3.11/site-packages/torch/nn/functional.py", 2000, "linear")
GRAPH = (7, 1)


def event(action, addr, size, *where, pool=None):
    e = {"action": action, "addr": addr, "size": size, "stream": 0, "frames": frames(*where)}
    if pool is not None:
        e["pool_id"] = pool
    return e


def snapshot(events, segments=()):
    return {"device_traces": [events], "segments": list(segments)}


def test_the_peak_is_split_into_what_came_before_and_the_live_blocks_by_site_and_pool():
    """100 MB allocated when the trace began; the traced steps allocate, free and free one block from before.
    The peak is the first event at the highest total, and at it: the blocks from before still allocated
    (100 - 10 MB), the traced blocks still live grouped by the innermost frame in our code and by pool; a
    block allocated and freed before the peak counts nowhere."""
    ev = [
        event("alloc", 0x1000, 30 * MB, TORCH, MODEL),                 # 130
        event("alloc", 0x9000, 5 * MB, TORCH, MODEL),                  # 135
        event("free_requested", 0x9000, 5 * MB),                       # 130: gone before the peak
        event("free_completed", 0x9000, 5 * MB),
        event("free_requested", 0x50000, 10 * MB),                     # 120: a block from before the trace
        event("segment_alloc", 0x80000, 64 * MB),
        event("alloc", 0x80000, 20 * MB, ATTN, pool=GRAPH),           # 140
        event("alloc", 0x90000, 4 * MB, TORCH, MODEL, pool=GRAPH),     # 144
        event("alloc", 0xA0000, 2 * MB, TORCH, MODEL, pool=GRAPH),     # 146 <- the peak (index 8)
        event("free_requested", 0x80000, 20 * MB),                     # 126
        event("alloc", 0xB0000, 20 * MB, ATTN, pool=GRAPH),           # 146 again: not a new peak
    ]
    r = peak_report(snapshot(ev), base_bytes=100 * MB, measured_peak_bytes=146 * MB)
    assert (r.peak_bytes, r.peak_event, r.events) == (146 * MB, 8, len(ev))
    assert r.before_bytes == 90 * MB and r.base_bytes == 100 * MB
    got = {(s.where, s.pool): (s.bytes, s.blocks) for s in r.sites}
    assert got == {("engine/model.py:120 forward", "default"): (30 * MB, 1),
                   ("kernels/blocksparse.py:1400 backward_part", "private 7,1"): (20 * MB, 1),
                   ("engine/model.py:120 forward", "private 7,1"): (6 * MB, 2)}
    assert [s.bytes for s in r.sites] == sorted((s.bytes for s in r.sites), reverse=True)
    assert r.by_pool == {"default": 30 * MB, "private 7,1": 26 * MB}
    assert r.before_bytes + sum(s.bytes for s in r.sites) == r.peak_bytes
    text = r.text()
    assert text.splitlines()[0].startswith("peak 0.153 GB allocated at event 8 of 11")  # GB of 10^9 bytes
    assert "0.153 GB" in text.splitlines()[0].split("own peak")[1]
    assert "kernels/blocksparse.py:1400 backward_part  [private 7,1]" in text
    json.dumps(__import__("dataclasses").asdict(r))  # the .json the bench writes


def test_without_pool_ids_the_pool_is_the_segments_and_a_trace_that_only_falls_has_its_start_as_peak():
    """Older torch records no pool in the events: a block's pool is that of the reserved segment it lies in.
    A trace that never rises above its start reports the start (event -1) with nothing traced live."""
    segs = [{"device": 0, "address": 0x0, "total_size": 0x10000, "segment_pool_id": (0, 0)},
            {"device": 0, "address": 0x10000, "total_size": 0x10000, "segment_pool_id": (3, 2)}]
    ev = [event("alloc", 0x100, MB, MODEL), event("alloc", 0x10100, 2 * MB, ATTN)]
    r = peak_report(snapshot(ev, segs), base_bytes=0)
    assert r.by_pool == {"default": MB, "private 3,2": 2 * MB}
    falling = peak_report(snapshot([event("free_requested", 0x100, MB)]), base_bytes=8 * MB)
    assert (falling.peak_bytes, falling.peak_event, falling.sites, falling.before_bytes) == (8 * MB, -1, [], 8 * MB)


def test_requested_sizes_count_as_the_allocators_blocks():
    """The history records what was asked for; the allocator counts whole blocks of 512-byte multiples
    (on the H200 a 4-byte loss among the live blocks left the replay 508 bytes under its own peak a time).
    A block from before the trace that is freed in it leaves the same rounded size."""
    assert [block_bytes(n) for n in (1, 4, 512, 513, 1000, 3 * MB + 1)] == [512, 512, 512, 1024, 1024, 3 * MB + 512]
    ev = [event("alloc", 0x1000, 4, MODEL), event("alloc", 0x2000, 1000, ATTN),
          event("free_requested", 0x50000, 100)]
    r = peak_report(snapshot(ev), base_bytes=4096)
    assert (r.peak_bytes, r.peak_event) == (4096 + 512 + 1024, 1)
    assert {s.where: s.bytes for s in r.sites} == {"engine/model.py:120 forward": 512,
                                                    "kernels/blocksparse.py:1400 backward_part": 1024}
    after = peak_report(snapshot(ev + [event("alloc", 0x3000, 600, MODEL)]), base_bytes=4096)
    assert after.peak_bytes == 4096 + 512 + 1024 - 512 + 1024 and after.before_bytes == 4096 - 512


def test_a_block_is_charged_to_the_innermost_frame_in_our_code():
    assert call_site(frames(TORCH, ATTN, MODEL)) == "kernels/blocksparse.py:1400 backward_part"
    assert call_site(frames(TORCH)) == "torch/nn/functional.py:2000 linear"  # none of ours: the innermost
    assert call_site([]) == "(no stack recorded)"


def test_memory_trace_paths_and_the_cpu_refusal(tmp_path, capsys):
    """Each point's trace is named by its label and length in OUT/memory; on a CPU there is no allocator
    history to record, which the command says in one line before any work."""
    opts = B.Options(device="cuda", memory_trace=str(tmp_path / "memory"))
    assert B.trace_path(opts, "fixed, kept attention", 65536) == tmp_path / "memory" / "memory_fixed__kept_attention_n65536"
    assert B.trace_path(B.Options(device="cpu", memory_trace=str(tmp_path)), "fixed", 1024) is None
    assert B.trace_path(B.Options(device="cuda"), "fixed", 1024) is None
    with pytest.raises(SystemExit) as exit_:
        bench_main(["--device", "cpu", "--memory-trace", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "megastride bench scaling: error: --memory-trace records the CUDA allocator: it needs --device cuda"
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("graph", [False, True])
def test_a_traced_bench_point_accounts_for_the_allocators_own_peak(tmp_path, graph):
    """On a GPU: a small fixed-pattern point timed with --memory-trace writes its report, whose replayed
    peak is the allocator's max_memory_allocated over the same steps (to within the whole cached blocks
    it may hand out for a request: under 1 MiB each, a few at a time), split exactly into blocks from
    before the trace and live traced blocks; under a CUDA graph some of those are in a private pool."""
    from megastride.engine.memtrace import PeakReport, Site

    base = B.config_for(B.load_config(B.CONFIGS / "tiny.yaml"), B.KINDS["fixed"], 1024,
                        ["model.dropout=0", f"train.cuda_graph={str(graph).lower()}", "train.checkpoint_blocks=auto"])
    opts = B.Options(device="cuda", steps=2, warmup=1, memory_trace=str(tmp_path), log=lambda _: None)
    row = B.measure("fixed", base, opts)
    assert row.status == "ok", row
    report = json.loads((tmp_path / "memory_fixed_n1024.json").read_text())
    r = PeakReport(**{**report, "sites": [Site(**s) for s in report["sites"]]})
    assert r.measured_peak_bytes is not None and 0 <= r.measured_peak_bytes - r.peak_bytes < 4 * MB
    assert abs(r.measured_peak_bytes / B.planner.GB - row.peak_gb) < 1e-9
    assert r.before_bytes + sum(s.bytes for s in r.sites) == r.peak_bytes
    assert any(pool != "default" for pool in r.by_pool) == graph
    assert (tmp_path / "memory_fixed_n1024.pickle").stat().st_size > 0
