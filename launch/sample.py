"""`megastride sample RUN_DIR [--prompt TEXT | --prompt-file PATH] [--bytes N]`: generate bytes from a checkpoint."""

from __future__ import annotations

import os
import sys

from megastride.launch.errors import ArgumentParser, user_errors

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # a --prompt-file an image model reads as a picture


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="megastride sample", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory of `megastride train` (its newest checkpoint is read)")
    given = parser.add_mutually_exclusive_group()
    given.add_argument("--prompt", default="", help="text to continue (its bytes as given, any encoding)")
    given.add_argument("--prompt-file", default=None, metavar="PATH",
                       help="continue this file's raw bytes (e.g. an audio clip); for an image model a .png or .jpg "
                            "of its shape gives its top rows (--prompt-rows); only the continuation is printed or "
                            "written, not the file")
    parser.add_argument("--prompt-rows", type=int, default=None, metavar="R",
                        help="for an image model given a .png/.jpg --prompt-file of its shape: continue the picture's "
                             "top R rows (default: half of them)")
    parser.add_argument("--bytes", type=int, default=None, dest="length",
                        help="bytes to generate after the prompt (default 256; for an image model, the rest of "
                             "the image)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="0: the most likely byte every time (a tiny temperature acts the same)")
    parser.add_argument("--top-k", type=int, default=0,
                        help="draw from the k most likely bytes only (0, the default: from all 256)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random draws (default 0)")
    parser.add_argument("--out", default=None,
                        help="write raw bytes here instead of printing text; for an image model a name ending in "
                             ".png writes the whole image, prompt and continuation, as a picture")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    # the model reads bytes: the prompt's own bytes, also where the shell passed some that are not UTF-8
    prompt = os.fsencode(args.prompt)
    with user_errors("megastride sample"):
        from megastride.engine.config import ConfigError
        from megastride.launch.errors import check_new_file, check_number

        if args.prompt_file is not None:
            prompt = _read_prompt(args.prompt_file)
        if args.length is not None:
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
        shape = cfg.model.embedding.image_shape if cfg.model.embedding.kind == "image" else None
        if args.prompt_rows is not None or (shape and args.prompt_file
                                            and args.prompt_file.lower().endswith(IMAGE_SUFFIXES)):
            prompt = _picture_prompt(args.prompt_file, args.prompt_rows, shape)
        if shape and args.length is None and len(prompt) >= cfg.model.seq_len:
            raise ConfigError(f"the prompt's {len(prompt):,} bytes already fill the model's {cfg.model.seq_len:,}-byte "
                              "image: nothing is left to sample")
        length = args.length if args.length is not None else cfg.model.seq_len - len(prompt) if shape else 256
        picture = bool(args.out) and args.out.lower().endswith(".png")
        if picture:
            _check_picture(shape, len(prompt), length, cfg.model.seq_len)
        gen = torch.Generator().manual_seed(args.seed)
        data = sample(model, prompt, length, args.temperature, args.top_k, gen, device)
    if picture:
        import numpy as np
        from PIL import Image

        pixels = np.frombuffer(prompt + data, dtype=np.uint8).reshape(shape)
        Image.fromarray(pixels[..., 0] if shape[2] == 1 else pixels).save(args.out)
        print(f"wrote a {shape[0]}x{shape[1]}x{shape[2]} image to {args.out} ({len(prompt):,} bytes of prompt, "
              f"{len(data):,} sampled)")
    elif args.out:
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


def _check_picture(shape, prompt: int, length: int, seq_len: int) -> None:
    """A .png --out needs an image model, a channel count a PNG holds, and the whole image sampled."""
    from megastride.engine.config import ConfigError

    if shape is None:
        raise ConfigError("--out *.png writes an image model's samples; this run's model reads bytes "
                          "(give another name for the raw bytes)")
    if shape[2] not in (1, 3, 4):
        raise ConfigError(f"--out *.png: images of {shape[2]} channels are not a PNG (1, 3 or 4); give another "
                          "name for the raw bytes")
    if prompt + length != seq_len:
        raise ConfigError(f"--out *.png needs the whole image: the prompt's {prompt:,} bytes and --bytes {length:,} "
                          f"make {prompt + length:,} of {seq_len:,} (leave --bytes out for the rest of the image)")


def _picture_prompt(path: str | None, rows: int | None, shape) -> bytes:
    """The top ``rows`` rows (default half) of the picture at ``path``, which must have the model's shape."""
    from megastride.data_shards.write_images import read_image_array
    from megastride.engine.config import ConfigError

    if shape is None:
        raise ConfigError("--prompt-rows is for an image model; this run's model reads bytes")
    if path is None or not path.lower().endswith(IMAGE_SUFFIXES):
        raise ConfigError(f"--prompt-rows takes the top rows of a --prompt-file picture ({', '.join(IMAGE_SUFFIXES)})")
    h, w, c = shape
    if c not in (1, 3):
        raise ConfigError(f"a picture prompt is grey or RGB; this model's images have {c} channels (give raw bytes)")
    pixels = read_image_array(path, "L" if c == 1 else "RGB")
    if pixels.shape != (h, w, c):
        raise ConfigError(f"--prompt-file {path} is {'x'.join(map(str, pixels.shape))}; the model reads {h}x{w}x{c} "
                          "images (model.embedding.image_shape)")
    rows = h // 2 if rows is None else rows
    if not 1 <= rows < h:
        raise ConfigError(f"--prompt-rows must be from 1 to {h - 1} (the picture has {h} rows), got {rows}")
    return pixels[:rows].tobytes()
