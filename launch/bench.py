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


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHES:
        lines = ["usage: megastride bench <what> [args...]", ""]
        lines += [f"  {name:<10} {help_}" for name, (_, help_) in BENCHES.items()]
        print("\n".join(lines), file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return int(importlib.import_module(BENCHES[argv[0]][0]).main(argv[1:]) or 0)
