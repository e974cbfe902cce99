"""`megastride sample RUN_DIR [--prompt TEXT | --prompt-file PATH] [--bytes N]`: generate bytes from a checkpoint."""

from __future__ import annotations

import os
import sys

from megastride.launch.errors import ArgumentParser, user_errors


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="megastride sample", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory of `megastride train` (its newest checkpoint is read)")
    given = parser.add_mutually_exclusive_group()
    given.add_argument("--prompt", default="", help="text to continue (its bytes as given, any encoding)")
    given.add_argument("--prompt-file", default=None, metavar="PATH",
                       help="continue this file's raw bytes (e.g. an image's top rows or an audio clip); only the "
                            "continuation is printed or written, not the file")
    parser.add_argument("--bytes", type=int, default=256, dest="length",
                        help="bytes to generate after the prompt (default 256)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="0: the most likely byte every time (a tiny temperature acts the same)")
    parser.add_argument("--top-k", type=int, default=0,
                        help="draw from the k most likely bytes only (0, the default: from all 256)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random draws (default 0)")
    parser.add_argument("--out", default=None, help="write raw bytes here instead of printing text")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    # the model reads bytes: the prompt's own bytes, also where the shell passed some that are not UTF-8
    prompt = os.fsencode(args.prompt)
    with user_errors("megastride sample"):
        from megastride.launch.errors import check_new_file, check_number

        if args.prompt_file is not None:
            prompt = _read_prompt(args.prompt_file)
        check_number(args.length, "--bytes", 1)
        check_number(args.temperature, "--temperature", 0)
        check_number(args.top_k, "--top-k", 0)  # 0: no cut
        if args.out:
            check_new_file(args.out, "--out", args.force)
        import torch

        from megastride.engine.inference import load_run, sample

        device = "cuda" if torch.cuda.is_available() else "cpu"
        cfg, model = load_run(args.run_dir, device)
        check_number(args.top_k, "--top-k", 0, cfg.model.vocab_size)  # at most the vocabulary (256 bytes)
        gen = torch.Generator().manual_seed(args.seed)
        data = sample(model, prompt, args.length, args.temperature, args.top_k, gen, device)
    if args.out:
        with open(args.out, "wb") as f:
            f.write(data)
        print(f"wrote {len(data)} bytes to {args.out}")
    else:
        shown = data if args.prompt_file is not None else prompt + data  # a file's bytes are not echoed
        sys.stdout.write(shown.decode("utf-8", errors="replace") + "\n")
    return 0


def _read_prompt(path: str) -> bytes:
    """The raw bytes of --prompt-file; a missing, unreadable or empty file is a one-line error."""
    from megastride.engine.config import ConfigError

    if os.path.isdir(path):
        raise ConfigError(f"--prompt-file {path} is a folder, not a file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"--prompt-file {path}: {e.strerror or e}") from None
    if not data:
        raise ConfigError(f"--prompt-file {path} is empty (leave the option out to sample from nothing)")
    return data
