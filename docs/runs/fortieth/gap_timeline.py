"""Fortieth run: the GPU's timeline around the longest idle gap of a profiled training step, with streams.

Wraps ``kernels.profiling._idle_of`` so that, besides the usual summary, the events around the longest gap
(every GPU kernel and copy from 250 ms before it to 5 ms after, with their stream, consecutive repeats merged)
and the host's stream waits and event records before it are printed; then runs ``megastride bench scaling``
with the arguments given."""

import sys

from megastride.kernels import profiling
from megastride.launch.bench_scaling import main

_orig = profiling._idle_of


def _with_timeline(prof, iters, top):
    out = _orig(prof, iters, top)
    events = prof.profiler.kineto_results.events()
    gpu, host = [], []
    for e in events:
        row = (e.start_ns() / 1e6, e.end_ns() / 1e6, e.name(), e.device_resource_id())
        (gpu if "CUDA" in str(e.device_type()) else host).append(row)
    gpu.sort()
    longest = out["largest"][0]  # idle_gaps' own: at_ms counts from the first kernel's start
    a = min(g[0] for g in gpu if not g[2].startswith(("Memcpy", "Memset"))) + longest["at_ms"]
    b, t0 = a + longest["ms"], gpu[0][0]
    print(f"longest gap {b - a:.2f} ms from {a - t0:.2f} ms")
    merged = []
    for s, e, n, st in gpu:
        if e < a - 250 or s > b + 5:
            continue
        if merged and merged[-1][2] == n[:60] and merged[-1][3] == st:
            merged[-1][1], merged[-1][4] = e, merged[-1][4] + 1
        else:
            merged.append([s, e, n[:60], st, 1])
    for s, e, n, st, c in merged:
        print(f"  gpu {s - a:9.2f} {e - a:9.2f} stream {st:3d} x{c:<4d} {n}")
    for s, e, n, st in sorted(host):
        if a - 1500 <= s <= b and (n.startswith(("cudaStreamWaitEvent", "cudaEventRecord", "BlockCheckpoint",
                                                  "cudaMemcpyAsync", "cudaEventSynchronize", "cudaStreamSynchronize"))):
            print(f"  host {s - a:9.2f} {e - a:9.2f} {n[:60]}")
    return out


profiling._idle_of = _with_timeline
sys.exit(main(sys.argv[1:]))
