"""`megastride config CONFIG [--set k=v] [--deepspeed --world-size N]`: print the resolved tree or DeepSpeed JSON."""

from __future__ import annotations

import json

from megastride.launch.errors import ArgumentParser, user_errors


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="megastride config", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, e.g. train.lr=1e-3 (repeatable)")
    parser.add_argument("--deepspeed", action="store_true", help="print the generated DeepSpeed JSON instead")
    parser.add_argument("--world-size", type=int, default=1,
                        help="data-parallel ranks the DeepSpeed JSON is for (default 1)")
    args = parser.parse_args(argv)
    with user_errors("megastride config"):
        from megastride.engine.config import dump_config, load_config
        from megastride.engine.deepspeed_config import check_zero_options, deepspeed_config

        from megastride.launch.errors import check_number

        check_number(args.world_size, "--world-size", 1)
        cfg = load_config(args.config, args.overrides)
        check_zero_options(cfg)
    print(json.dumps(deepspeed_config(cfg, args.world_size), indent=2) if args.deepspeed else dump_config(cfg), end="\n")
    return 0
