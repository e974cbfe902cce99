"""`megastride patterns show|draw SPEC`: inspect a pattern's compressed layout or draw it as a PNG.

    megastride patterns show "fixed(128,32)" --seq-len 12288 --block 128 --heads 8
    megastride patterns draw "strided(16)" --seq-len 256 --block 16 --out strided.png
"""

from __future__ import annotations

import argparse

from megastride.launch.errors import ArgumentParser, user_errors


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="megastride patterns", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["show", "draw"],
                        help="show: print the compressed layout; draw: write a PNG of one head")
    parser.add_argument("spec",
                        help="layer pattern, e.g. 'fixed(128,32)', 'strided(auto)', 'local(64)|strided_half(64)'")
    parser.add_argument("--seq-len", type=int, default=256, help="sequence length in tokens (default 256)")
    parser.add_argument("--block", type=int, default=16,
                        help="attention block size; must divide --seq-len (default 16)")
    parser.add_argument("--heads", type=int, default=1, help="attention heads of the layer (default 1)")
    parser.add_argument("--head", type=int, default=0, help="head to draw")
    parser.add_argument("--out", default="pattern.png", help="PNG to write (draw; default pattern.png)")
    parser.add_argument("--scale", type=int, default=0, help="pixels per token (draw; 0 = fit to ~768 px)")
    return parser.parse_args(argv)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
MAX_PIXELS = 16384  # a picture's side at most


def draw(layout, head: int, path: str, scale: int) -> None:
    """Token mask of one head (white = attended) over a grey block grid; blocks for large n."""
    import numpy as np
    from PIL import Image

    n, b = layout.seq_len, layout.block
    if n > 4096:  # a token picture would be too large: one pixel per block (white full, grey partial)
        from megastride.kernels.patterns import _rows_of

        grid = np.zeros((n // b, n // b), dtype=np.uint8)
        for part in [p for p in layout.parts if head in p.heads]:
            if not part.natural:
                print(f"note: the part in its own order ({part.describe_order()}) has no natural block picture; not drawn")
                continue
            csr = part.csr[part.head_csr[part.heads.index(head)]]
            for value, ptr, idx in ((255, csr.row_full_ptr, csr.row_full_idx), (160, csr.row_part_ptr, csr.row_part_idx)):
                grid[_rows_of(ptr).numpy(), idx.numpy()] = value
        pixels = grid
    else:
        mask = layout.to_dense_mask()[head].numpy()
        pixels = np.where(mask, 255, 0).astype(np.uint8)
        pixels[(np.arange(n) % b == 0)[:, None] & ~mask] = 60  # block grid rows
        pixels[(np.arange(n) % b == 0)[None, :] & ~mask] = 60  # block grid columns
    scale = scale or max(1, 768 // pixels.shape[0])
    Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST).save(path)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    with user_errors("megastride patterns"):
        from megastride.engine.config import ConfigError, layer_pattern
        from megastride.kernels import build_layout
        from megastride.kernels.patterns import check_tiling

        if args.heads < 1:
            raise ConfigError(f"--heads must be at least 1, got {args.heads}")
        try:  # the pattern's ValueErrors as one-line user errors (ConfigError is one too)
            check_tiling(args.seq_len, args.block)
            pattern = layer_pattern(args.spec, args.heads, args.seq_len, args.block)
            if not 0 <= args.head < args.heads:
                raise ConfigError(f"--head {args.head} is not one of the {args.heads} heads")
            if args.action == "draw":  # checked before the layout, which can take half a minute on a CPU at 1M
                from megastride.launch.errors import check_output

                check_output(args.out, "--out", "file", IMAGE_SUFFIXES)
                side = args.seq_len if args.seq_len <= 4096 else args.seq_len // args.block
                if args.scale < 0 or side * (args.scale or 1) > MAX_PIXELS:
                    raise ConfigError(f"--scale {args.scale}: the picture would be {side * args.scale:,} pixels a "
                                      f"side (at most {MAX_PIXELS:,}; 0 fits it to about 768)" if args.scale > 0 else
                                      "--scale must be 0 (fit) or a positive number of pixels a token, "
                                      f"got {args.scale}")
            layout = build_layout(pattern, args.seq_len, args.block)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if args.action == "show":
        print(layout.describe())
        if args.seq_len <= 65536:
            print(f"density vs causal: {layout.density():.4f}")
        return 0
    draw(layout, args.head, args.out, args.scale)
    print(f"wrote {args.out}")
    return 0
