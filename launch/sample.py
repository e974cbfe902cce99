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
                       help="continue this file's raw bytes; for an image model a .png or .jpg of its shape gives its "
                            "top rows (--prompt-rows), for an audio model a .wav/.flac/.ogg its mu-law codes at the "
                            "model's sample rate; only the continuation is printed, not the file")
    parser.add_argument("--prompt-rows", type=int, default=None, metavar="R",
                        help="for an image model given a .png/.jpg --prompt-file of its shape: continue the picture's "
                             "top R rows (default: half of them)")
    parser.add_argument("--bytes", type=int, default=None, dest="length", metavar="N",
                        help="bytes to generate after the prompt (default 256; for an image model, the rest of "
                             "the image)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="0: the most likely byte every time (a tiny temperature acts the same)")
    parser.add_argument("--top-k", type=int, default=0,
                        help="draw from the k most likely bytes only (0, the default: from all 256)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random draws (default 0)")
    parser.add_argument("--out", default=None,
                        help="write raw bytes here instead of printing text; a name ending in .png (an image model) "
                             "or .wav (an audio model) writes the prompt and its continuation as a picture or sound")
    parser.add_argument("--sample-rate", type=int, default=None, metavar="HZ",
                        help="an audio model's sample rate, for .wav prompts and --out (default: its store's)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    # the model reads bytes: the prompt's own bytes, also where the shell passed some that are not UTF-8
    prompt = os.fsencode(args.prompt)
    with user_errors("megastride sample"):
        from megastride.engine.config import ConfigError
        from megastride.launch import sample_media as media
        from megastride.launch.errors import check_new_file, check_number

        if args.prompt_file is not None:
            prompt = _read_prompt(args.prompt_file)
        if args.length is not None:
            check_number(args.length, "--bytes", 1)
        if args.sample_rate is not None:
            check_number(args.sample_rate, "--sample-rate", 1)
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
        in_file = (args.prompt_file or "").lower()
        out_file = (args.out or "").lower()
        if args.prompt_rows is not None or (shape and in_file.endswith(media.IMAGE_SUFFIXES)):
            prompt = media.picture_prompt(args.prompt_file, args.prompt_rows, shape)
        rate, sound_in = None, in_file.endswith(media.AUDIO_SUFFIXES)
        if out_file.endswith(".wav") or args.sample_rate is not None or (sound_in and not shape):
            # --out *.wav and --sample-rate need an audio model; a sound file alone is raw bytes to a byte model
            need = "--out *.wav" if out_file.endswith(".wav") else "--sample-rate" if args.sample_rate else None
            if shape:
                raise ConfigError(f"{need} is for an audio model; this run's model reads images")
            rate = media.audio_rate(cfg.data.path, args.sample_rate, need or f"--prompt-file {args.prompt_file}",
                                    required=need is not None)
            if sound_in and rate is not None:
                prompt = media.audio_prompt(args.prompt_file, rate)
        if shape and args.length is None and len(prompt) >= cfg.model.seq_len:
            raise ConfigError(f"the prompt's {len(prompt):,} bytes already fill the model's {cfg.model.seq_len:,}-byte "
                              "image: nothing is left to sample")
        length = args.length if args.length is not None else cfg.model.seq_len - len(prompt) if shape else 256
        if out_file.endswith(".png"):
            media.check_picture(shape, len(prompt), length, cfg.model.seq_len)
        gen = torch.Generator().manual_seed(args.seed)
        data = sample(model, prompt, length, args.temperature, args.top_k, gen, device)
    if out_file.endswith(".png"):
        media.write_picture(args.out, prompt + data, shape)
        print(f"wrote a {shape[0]}x{shape[1]}x{shape[2]} image to {args.out} ({len(prompt):,} bytes of prompt, "
              f"{len(data):,} sampled)")
    elif out_file.endswith(".wav"):
        media.write_wav(args.out, prompt + data, rate)
        print(f"wrote {(len(prompt) + len(data)) / rate:.2f} s of sound at {rate:,} Hz to {args.out} "
              f"({len(prompt):,} samples of prompt, {len(data):,} sampled)")
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
