"""`megastride eval RUN_DIR [--split valid] [--windows N] [--data PATH]`: bits per byte of a checkpoint."""

from __future__ import annotations

from megastride.launch.errors import ArgumentParser, user_errors


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="megastride eval", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--split", default=None, help="default: the config's valid split")
    parser.add_argument("--windows", type=int, default=None, help="default: every window of the split")
    parser.add_argument("--data", default=None, help="another store than the run's")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    args = parser.parse_args(argv)
    with user_errors("megastride eval"):
        from megastride.launch.errors import check_device, check_number

        check_number(args.windows, "--windows", 1)
        check_device(args.device, "--device")
        from megastride.data_shards import eval_windows
        from megastride.engine.inference import evaluate_bpb, load_run

        cfg, model = load_run(args.run_dir, args.device)
        split = args.split or cfg.data.valid_split
        windows = eval_windows(args.data or cfg.data.path, split=split, seq_len=cfg.model.seq_len,
                               max_windows=args.windows)
        bpb, count = evaluate_bpb(model, windows, args.device)
    print(f"{split}: {bpb:.4f} bits per byte over {count:,} bytes")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
