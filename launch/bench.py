"""`megastride bench <what>`: dispatch to one benchmark module per subject."""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "attention": ("megastride.launch.bench_attention", "our kernels vs FlexAttention vs dense SDPA"),
    "tiles": ("megastride.launch.bench_tiles", "one kernel at each tile config, beside Flex's same half"),
    "data": ("megastride.launch.bench_data", "zarr streaming reader vs numpy.memmap"),
    "scaling": ("megastride.launch.bench_scaling", "training step cost vs sequence length"),
}


def _usage() -> str:
    lines = ["usage: megastride bench <what> [args...]", ""]
    return "\n".join(lines + [f"  {name:<10} {help_}" for name, (_, help_) in BENCHES.items()])


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if not argv:  # as the top-level command: what there is to run, on stderr, and a failing status
        print(f"megastride bench: error: no bench kind given\n\n{_usage()}", file=sys.stderr)
        return 2
    if argv[0] not in BENCHES:
        print(f"megastride bench: error: unknown bench kind {argv[0]!r} (choose from {', '.join(BENCHES)})",
              file=sys.stderr)
        return 2
    return int(importlib.import_module(BENCHES[argv[0]][0]).main(argv[1:]) or 0)
