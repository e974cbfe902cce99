"""`megastride train CONFIG [--set key=value ...]`; also the script the deepspeed launcher runs.

    deepspeed --num_gpus 8 launch/train.py configs/enwik8.yaml --set run.dir=runs/e8
"""

from __future__ import annotations

import argparse
import os
import sys

from megastride.launch.errors import ArgumentParser, user_errors


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="megastride train", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set train.steps=50 (repeatable)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.local_rank is not None:  # the deepspeed launcher passes it; the environment is the truth
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    with user_errors("megastride train"):
        from megastride.engine.config import load_config
        from megastride.engine.trainer import Trainer

        cfg = load_config(args.config, args.overrides)
        trainer = Trainer(cfg)
    try:
        with user_errors("megastride train"):  # a data chunk found damaged mid-run: one line; checkpoints stay
            result = trainer.fit()
    finally:
        trainer.close()
    if trainer.rank == 0:
        valid = f"{result.valid_bpb:.4f}" if result.valid_bpb is not None else "n/a"
        print(f"step {result.step}: validation {valid} bits per byte (uniform guess: 8.0)")
        print(f"TensorBoard logs: {result.tensorboard_dir}  (tensorboard --logdir {result.tensorboard_dir})")
        print(f"checkpoints and resolved config: {result.run_dir}")
    return 0


def exit_now(code: int) -> None:
    """Leave without running C++ static destructors.

    Communication libraries (gloo, DeepSpeed's shared-memory ops) can still own joinable threads
    at interpreter exit, which aborts the process ("terminate called without an active exception")
    after a perfectly good run, so a launcher would report the job as failed. Everything is flushed
    and closed by then, so skipping the destructors loses nothing.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
