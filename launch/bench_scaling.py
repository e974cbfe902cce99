"""`megastride bench scaling`: training-step cost vs sequence length, dense vs fixed vs strided.

    megastride bench scaling --device cuda --config configs/enwik8.yaml --out runs/scaling
    megastride bench scaling --device cuda --table2 --out runs/scaling
    megastride bench scaling --device cuda --baseline --out runs/scaling  # + issue 5's plain PyTorch baseline
    megastride bench scaling --device cuda --validate-plan --out runs/scaling
    megastride bench scaling --device cuda --validate-plan --case "fixed, kept attention" --out runs/scaling
    megastride bench scaling --device cpu --quick --set model.n_layers=2 --set model.d_model=64
    megastride bench scaling --device cuda --kinds fixed --lengths 1048576 --alternate MEGASTRIDE_FFN_GEMM=nograd,0

Writes scaling.csv/.json/.png (sweep), table2.csv/.json (--table2), plan_check.csv/.json
(--validate-plan) and TensorBoard scalars under OUT/tensorboard. docs/scaling.md explains the method.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megastride.launch.errors import ArgumentParser, user_errors

PROG = "megastride bench scaling"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="model size for the sweep (default: configs/enwik8.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override (repeatable); applies to --table2 configs too")
    p.add_argument("--lengths", default=None, help="comma-separated sequence lengths "
                   "(sweep default 1024,4096,...,1048576; --validate-plan default 12288,65536,262144)")
    p.add_argument("--kinds", default="dense,fixed,strided", help="attention kinds of the sweep")
    p.add_argument("--steps", type=int, default=3, help="timed steps per point (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per point")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default: the config's micro-batch)")
    p.add_argument("--budget-s", type=float, default=100.0, help="wall seconds per sweep series")
    p.add_argument("--memory-fraction", type=float, default=0.95,
                   help="skip points the planner puts above this share of GPU memory")
    p.add_argument("--host-floor-gb", type=float, default=None,
                   help="stop a point (status 'stopped (host memory)') where the host's available memory falls below "
                        "this (default: 3%% of its memory, at least 2 GB; 0: never), before the machine runs out")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where to time the steps (default cuda)")
    p.add_argument("--out", default="runs/scaling", help="output folder")
    p.add_argument("--quick", action="store_true", help="two short lengths, one timed step: a smoke test")
    p.add_argument("--table2", action="store_true", help="the paper's Table 2 (enwik8 at 12,288, CIFAR-10 at 3,072)")
    p.add_argument("--validate-plan", action="store_true",
                   help="measured vs planned peak at 10 configurations (engine.bench_scaling.VALIDATION)")
    p.add_argument("--case", dest="cases", action="append", default=[], metavar="LABEL",
                   help='only the --validate-plan configurations with this label, e.g. "fixed, kept attention" '
                        "(repeatable; implies --validate-plan)")
    p.add_argument("--profile", action="store_true",
                   help="also profile 2 steps per point (CUDA): wall vs host vs GPU time, top kernels, kernel time by "
                        "kind (attention, products, elementwise, ...) and host ops, "
                        "and where the GPU idles between kernels (OUT/profile.json)")
    p.add_argument("--memory-trace", action="store_true",
                   help="record the CUDA allocator's history over each point's measured steps and write what its peak "
                        "was made of (by call site and memory pool) to OUT/memory/ (.txt, .json, and the .pickle "
                        "snapshot for pytorch.org/memory_viz); the recording slows the steps")
    p.add_argument("--all", action="store_true", help="sweep, --table2 and --validate-plan in one run")
    p.add_argument("--alternate", default=None, metavar="NAME=V1,V2",
                   help="an environment variable read at call time and two or more values: each point's warm-up "
                        "and timed steps alternate them (rotated order each round), one row a value (column "
                        "variant), in one process: an A/B without two set-ups or two machines' drift (sweeps only; "
                        "not with CUDA graphs, --profile or --memory-trace)")
    p.add_argument("--baseline", action="store_true",
                   help="add issue 5's baseline to the sweep, the plain PyTorch script (engine.baseline): series "
                        "baseline-dense (SDPA) and baseline-flex (compiled FlexAttention, fixed pattern; CUDA only)")
    return p.parse_args(argv)


def _ints(text: str, what: str) -> list[int]:
    from megastride.engine.config import ConfigError

    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise ConfigError(f"{what} must be positive integers, got {text!r}")
    return values


def _check(args: argparse.Namespace) -> None:
    from megastride.engine.bench_scaling import BASELINE_KINDS, KINDS, validation_cases
    from megastride.engine.config import ConfigError

    validation_cases(args.cases)  # an unknown label fails before any work
    known = {**KINDS, **BASELINE_KINDS}
    unknown = [k for k in args.kinds.split(",") if k not in known]
    if unknown:
        raise ConfigError(f"--kinds: unknown kind {unknown[0]!r} (known: {', '.join(known)})")
    if args.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {args.steps}")
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.memory_trace and args.device != "cuda":
        raise ConfigError("--memory-trace records the CUDA allocator: it needs --device cuda")
    from megastride.launch.errors import check_number, check_output

    check_number(args.batch, "--batch", 1)  # left out: the config's micro-batch; 0 is no batch, not that
    check_number(args.memory_fraction, "--memory-fraction", 0, 1, low_open=True)
    check_number(args.budget_s, "--budget-s", 0, low_open=True)
    check_number(args.host_floor_gb, "--host-floor-gb", 0)
    check_output(args.out, "--out", "folder")  # before the sweep, not after it has run
    if args.alternate is not None:
        from megastride.engine.bench_scaling import parse_alternate

        parse_alternate(args.alternate)
        clash = [flag for flag, on in (("--table2", args.table2), ("--validate-plan", args.validate_plan or args.cases),
                                       ("--all", args.all), ("--profile", args.profile),
                                       ("--memory-trace", args.memory_trace)) if on]
        if clash:
            raise ConfigError(f"--alternate times a sweep's steps only: drop {clash[0]}")


def _check_device(args: argparse.Namespace) -> None:
    """After every argument and config check, so a bad one is named even where no GPU is."""
    import torch

    from megastride.engine.config import ConfigError

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but torch sees no CUDA GPU (use --device cpu for a smoke test)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with user_errors(PROG):
        from megastride.engine import bench_scaling as B
        from megastride.engine.config import ConfigError, load_config

        _check(args)
        base = load_config(args.config or B.CONFIGS / "enwik8.yaml", args.overrides)
        lengths = _ints(args.lengths, "--lengths") if args.lengths else None
        validate = args.validate_plan or args.all or bool(args.cases)
        sweep = args.all or not (args.table2 or validate)
        sweep_lengths = lengths or (list(B.DEFAULT_LENGTHS[:2]) if args.quick else list(B.DEFAULT_LENGTHS))
        for kind in _kinds(args, B) if sweep else []:
            # a length the config cannot take (its block does not divide it) fails here, not after the
            # shorter lengths' points have run and been lost with the error
            for n in sweep_lengths if kind in B.KINDS else []:
                B.config_for(base, B.KINDS[kind], n)
        alternate = B.parse_alternate(args.alternate) if args.alternate else None
        if alternate and base.train.cuda_graph:
            raise ConfigError("--alternate switches a variable between steps, and a CUDA graph replays one path: "
                              "set train.cuda_graph=false")
        _check_device(args)
        opts = B.Options(device=args.device, steps=1 if args.quick else args.steps, warmup=args.warmup,
                         budget_s=args.budget_s, memory_fraction=args.memory_fraction, batch=args.batch,
                         profile=args.profile,
                         host_floor_bytes=None if args.host_floor_gb is None else args.host_floor_gb * 1e9,
                         memory_trace=str(Path(args.out) / "memory") if args.memory_trace else None,
                         alternate=alternate)
        meta = B.environment() | {"config": str(args.config), "overrides": args.overrides, "device": args.device,
                                  "steps": opts.steps, "warmup": opts.warmup, "alternate": args.alternate}
        out = Path(args.out)
        if sweep:
            _report(B, B.sweep(base, _kinds(args, B), sweep_lengths, opts), out, "scaling", meta, True)
        if args.table2 or args.all:
            _report(B, B.table2(opts, overrides=args.overrides), out, "table2", meta, False)
        if validate:
            rows = B.validate_plan(base, opts, lengths or list(B.VALIDATION_LENGTHS), B.validation_cases(args.cases))
            _report(B, rows, out, "plan_check", meta, False)
            _plan_verdict(rows)
        if opts.profiles:
            out.mkdir(parents=True, exist_ok=True)
            (out / "profile.json").write_text(json.dumps(opts.profiles, indent=1))
            print(f"wrote {out / 'profile.json'}")
    return 0


def _kinds(args: argparse.Namespace, B) -> list[str]:
    """The sweep's series: --kinds, then with --baseline the baseline's series not named there."""
    kinds = args.kinds.split(",")
    return kinds + [k for k in B.BASELINE_KINDS if args.baseline and k not in kinds]


def _report(B, rows, out: Path, name: str, meta: dict, with_plot: bool) -> None:
    paths = B.write_outputs(rows, out, name, dict(meta), with_plot)
    print(B.markdown_table(rows))
    fitted = {k: v for k, v in B.slopes(rows).items() if v is not None}
    if with_plot and fitted:
        print("fitted slopes (step time ~ n^slope): " + ", ".join(f"{k} {v:.2f}" for k, v in fitted.items()))
    print("wrote " + ", ".join(str(p) for p in paths) + f", {out / 'tensorboard'}")


def _plan_verdict(rows) -> None:
    errors = [abs(r.plan_error_pct) for r in rows if r.plan_error_pct is not None]
    if errors:
        within = sum(e <= 15 for e in errors)
        print(f"planner within 15% of the measured peak at {within} of {len(errors)} configurations "
              f"(worst {max(errors):.1f}%)")
    else:
        print("no measured peaks (peak memory is measured on CUDA only)")


if __name__ == "__main__":
    sys.exit(main())
