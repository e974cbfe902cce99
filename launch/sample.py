"""`megastride sample RUN_DIR [--prompt TEXT] [--bytes N]`: generate bytes from a checkpoint."""

from __future__ import annotations

import argparse
import sys

from megastride.launch.errors import user_errors


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="megastride sample", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--prompt", default="", help="text to continue (UTF-8)")
    parser.add_argument("--bytes", type=int, default=256, dest="length")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write raw bytes here instead of printing text")
    args = parser.parse_args(argv)
    with user_errors("megastride sample"):
        import torch

        from megastride.engine.inference import load_run, sample

        device = "cuda" if torch.cuda.is_available() else "cpu"
        _, model = load_run(args.run_dir, device)
        gen = torch.Generator().manual_seed(args.seed)
        data = sample(model, args.prompt.encode(), args.length, args.temperature, args.top_k, gen, device)
    if args.out:
        with open(args.out, "wb") as f:
            f.write(data)
        print(f"wrote {len(data)} bytes to {args.out}")
    else:
        sys.stdout.write(args.prompt + data.decode("utf-8", errors="replace") + "\n")
    return 0
