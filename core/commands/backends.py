"""List the training backends, the plugin providing each, and whether it can run here
(if not, the exact install command)."""
from __future__ import annotations

HELP = "list backends and whether their framework is installed"


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def run(args) -> int:
    import json

    from ..plugins import get_backends

    for name, info in sorted(get_backends().items()):
        missing = info.missing
        row = {"name": name, "plugin": info.plugin, "available": not missing, "description": info.description,
               "missing": missing, "install": info.install_hint if missing else None}
        if args.json:
            print(json.dumps(row))
        else:
            status = "available" if not missing else f"unavailable: needs {', '.join(missing)}; install with: {info.install_hint}"
            print(f"{name:<10} plugin {info.plugin}  {status}")
            if info.description:
                print(f"{'':<10} {info.description}")
    return 0
