"""`megastride eval RUN_DIR [--split valid] [--windows N] [--data PATH]`: bits per byte of a checkpoint."""

from __future__ import annotations

from megastride.launch.errors import ArgumentParser, user_errors


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="megastride eval", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory of `megastride train` (its newest checkpoint is read)")
    parser.add_argument("--split", default=None, help="default: the config's valid split")
    parser.add_argument("--windows", type=int, default=None, help="default: every window of the split")
    parser.add_argument("--data", default=None, help="another store than the run's")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu",
                        help="cuda or cpu (default: cuda where torch sees a GPU)")
    args = parser.parse_args(argv)
    with user_errors("megastride eval"):
        from megastride.engine.config import ConfigError
        from megastride.launch.errors import check_device, check_number

        check_number(args.windows, "--windows", 1)
        for flag, value in (("--split", args.split), ("--data", args.data)):
            if value is not None and not value.strip():  # not the config's, silently
                raise ConfigError(f"{flag} is empty: name one, or leave {flag} out for the run's own")
        check_device(args.device, "--device")
        from megastride.data_shards import eval_windows
        from megastride.engine.inference import check_eval_data, evaluate_bpb, load_run

        cfg, model = load_run(args.run_dir, args.device)
        split = cfg.data.valid_split if args.split is None else args.split
        data = cfg.data.path if args.data is None else args.data
        check_eval_data(cfg, data, split)  # a store the model cannot read: named, as train names it
        windows = eval_windows(data, split=split, seq_len=cfg.model.seq_len, max_windows=args.windows)
        bpb, count = evaluate_bpb(model, windows, args.device)
    print(f"{split}: {bpb:.4f} bits per byte over {count:,} bytes")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
