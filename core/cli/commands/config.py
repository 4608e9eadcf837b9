"""Show the fully resolved config: defaults < config file < LORASWITCH_<KEY> environment < --KEY VALUE.

loraswitch config                       # the defaults, as YAML
loraswitch config run.yaml --lora_r 8 --json
"""

from __future__ import annotations

HELP = "print the resolved config (every key), as YAML or --json"
TAKES_OVERRIDES = True


def add_arguments(p) -> None:
    p.add_argument("file", nargs="?", metavar="FILE", help="YAML or TOML config file")
    p.add_argument("--json", action="store_true", help="one JSON object with every key")


def run(args) -> int:
    import json

    import yaml

    from loraswitch.core.config import resolve

    config = resolve(args.file, args.overrides)
    if args.json:
        print(json.dumps(config.model_dump(), allow_nan=False))  # the schema keeps every float finite
    else:
        print(yaml.safe_dump(config.model_dump(), sort_keys=False), end="")
    return 0
