"""List the registered plugins (built-in and installed): name, version and hooks.
LORASWITCH_PLUGINS=name1,name2 limits which installed (entry-point) plugins load."""

from __future__ import annotations

from loraswitch.core.cli.commands._listing import add_json_flag, print_rows

HELP = "list plugins with their versions and hooks"
add_arguments = add_json_flag  # --json is its only option


def run(args) -> int:
    from loraswitch.core.plugins import get_plugins

    print_rows(
        get_plugins(),
        args.json,
        lambda p: f"{p['name']} ({p['version'] or 'built-in'}): {', '.join(p['hooks']) or 'no hooks'}",
    )
    return 0
