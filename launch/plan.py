"""`megastride plan CONFIG`: predict per-GPU memory and step FLOPs before queuing a job.

    megastride plan configs/enwik8.yaml --seq-len 1048576 --world-size 8
    megastride plan configs/enwik8.yaml --set train.zero_stage=2 --set train.offload_optimizer=true --json
    megastride plan configs/enwik8.yaml --seq-len 262144 --runtime torch --set train.checkpoint_blocks=auto

Exit status 0 if the plan fits in --gpu-memory-gb, or in train.memory_budget_gb where that is less (and its
host memory in --host-memory-gb shared by --gpus-per-node ranks), 1 if it does not, 2 for a user error.
"""

from __future__ import annotations

import argparse
import math
import sys

from megastride.launch.errors import ArgumentParser, user_errors

PROG = "megastride plan"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set train.zero_stage=2 (repeatable)")
    p.add_argument("--seq-len", type=int, default=None, help="plan at this length (default: model.seq_len)")
    p.add_argument("--world-size", type=int, default=1, help="data-parallel GPUs (ZeRO shards over them)")
    p.add_argument("--gpu-memory-gb", type=float, default=141.0, help="memory of one GPU (H200: 141)")
    p.add_argument("--host-memory-gb", type=float, default=None,
                   help="RAM of one node (default: this machine's, or its cgroup's limit where lower); host offload shares "
                        "it among its ranks")
    p.add_argument("--gpus-per-node", type=int, default=None,
                   help="ranks sharing one node's RAM (default: the world size, at most 8)")
    p.add_argument("--runtime", choices=["deepspeed", "torch"], default=None,
                   help="deepspeed or torch (the plain loop: megastride train with train.runtime=torch, and "
                        "megastride bench scaling); default: the config's train.runtime")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with user_errors(PROG):
        from megastride.engine.config import ConfigError, graph_problem, load_config
        from megastride.engine.deepspeed_config import check_zero_options
        from megastride.engine.plan import plan
        from megastride.engine.trainer import check_runtime

        for option, value in (("--seq-len", args.seq_len), ("--world-size", args.world_size),
                              ("--gpu-memory-gb", args.gpu_memory_gb), ("--host-memory-gb", args.host_memory_gb),
                              ("--gpus-per-node", args.gpus_per_node)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{option} must be a positive finite number, got {value}")
        cfg = load_config(args.config, args.overrides)
        runtime = args.runtime or cfg.train.runtime
        # what `megastride train` refuses, refused alike; CUDA assumed: plan runs anywhere for the GPUs it plans.
        # --runtime torch on a DeepSpeed config plans the plain loop as `bench scaling` runs it, ZeRO left out (the
        # plan's note says so); a config that itself says train.runtime=torch keeps its zero_stage, refused as in train
        as_run = {"runtime": runtime} | ({"zero_stage": 0} if runtime != cfg.train.runtime == "deepspeed" else {})
        check_runtime(cfg.model_copy(update={"train": cfg.train.model_copy(update=as_run)}), args.world_size, cuda=True)
        check_zero_options(cfg)
        from megastride.engine.plan import host_basis_words, host_share_bytes, offload_hint, with_resolved

        gpu_bytes = args.gpu_memory_gb * 1e9
        node_bytes = args.host_memory_gb * 1e9 if args.host_memory_gb is not None else None
        ranks = args.gpus_per_node or min(args.world_size, 8)
        host_bytes = host_share_bytes(ranks, node_bytes)
        try:  # checkpoint_blocks / keep_attention "auto": the least recompute work that fits --gpu-memory-gb
            # (offload_attention "auto" with them, within the rank's share of the node's RAM)
            result = plan(cfg, args.seq_len, args.world_size, runtime=runtime,
                          gpu_bytes=gpu_bytes, host_bytes=host_bytes)
        except ValueError as err:  # e.g. a length the block size does not divide
            raise ConfigError(str(err).splitlines()[0]) from None
        problem = graph_problem(with_resolved(cfg, result))  # as train: checkpoint_blocks "auto" resolved first
        if problem:
            raise ConfigError(problem)
    budget = cfg.train.memory_budget_gb  # a job held to less than the GPU: judged against that
    limit = min(gpu_bytes, budget * 1e9) if budget is not None else gpu_bytes
    print(result.json() if args.json else result.table(limit, host_bytes, host_basis_words(ranks, node_bytes)))
    fits = result.fits(limit, host_bytes)
    if not fits and not args.json:
        hint = offload_hint(cfg, args.seq_len, args.world_size, runtime,
                            gpu_bytes=gpu_bytes, limit_bytes=limit, host_bytes=host_bytes)
        if hint:
            print(f"hint: {hint}")
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(main())
