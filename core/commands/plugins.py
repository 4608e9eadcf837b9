"""List the registered plugins (built-in and installed): name, version and hooks.
LORASWITCH_PLUGINS=name1,name2 limits which installed (entry-point) plugins load."""
from __future__ import annotations

HELP = "list plugins with their versions and hooks"


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def run(args) -> int:
    import json

    from ..plugins import get_plugins

    for plugin in get_plugins():
        if args.json:
            print(json.dumps(plugin))
        else:
            version = plugin["version"] or "built-in"
            print(f"{plugin['name']} ({version}): {', '.join(plugin['hooks']) or 'no hooks'}")
    return 0
