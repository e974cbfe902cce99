"""The `megastride` console command: one entry point, one module per subcommand."""

from __future__ import annotations

import difflib
import importlib
import sys

# subcommand -> (module, one-line help). Modules are imported lazily so `megastride --help`
# and light subcommands do not pay for importing torch or deepspeed.
SUBCOMMANDS = {
    "prepare": ("megastride.launch.prepare", "write a zarr shard store from text, images or audio"),
    "train": ("megastride.launch.train", "train a model from a YAML config"),
    "eval": ("megastride.launch.evaluate", "evaluate a checkpoint in bits per byte"),
    "sample": ("megastride.launch.sample", "sample bytes from a checkpoint"),
    "bench": ("megastride.launch.bench", "benchmarks: attention, tiles, data, scaling"),
    "plan": ("megastride.launch.plan", "predict memory and FLOPs of a config before queuing it"),
    "curves": ("megastride.launch.curves", "a run's loss curve from its metrics.jsonl: table and PNG"),
    "stats": ("megastride.launch.stats", "bits-per-byte baselines of a store's windows"),
    "patterns": ("megastride.launch.patterns", "inspect and draw attention patterns"),
    "config": ("megastride.launch.config", "print the resolved config or the DeepSpeed JSON"),
}


def _usage() -> str:
    lines = ["usage: megastride <command> [args...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if not argv:  # no command: what there is to run, on stderr, and a failing status for scripts
        print(f"megastride: error: no command given\n\n{_usage()}", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        close = difflib.get_close_matches(name, SUBCOMMANDS, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"megastride: error: unknown command {name!r}{guess}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    code = int(module.main(rest) or 0)
    if hasattr(module, "exit_now"):  # commands that started communication threads leave hard
        module.exit_now(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
