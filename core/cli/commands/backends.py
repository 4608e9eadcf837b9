"""List the training backends, the plugin providing each, and whether it can run here
(if not, the exact install command)."""

from __future__ import annotations

from loraswitch.core.cli.commands._listing import add_json_flag, print_rows

HELP = "list backends and whether their framework is installed"
add_arguments = add_json_flag  # --json is its only option


def _text(row) -> str:
    status = (
        "available"
        if row["available"]
        else f"unavailable: needs {', '.join(row['missing'])}; install with: {row['install']}"
    )
    line = f"{row['name']:<10} plugin {row['plugin']}  {status}"
    return line + (f"\n{'':<10} {row['description']}" if row["description"] else "")


def run(args) -> int:
    from loraswitch.core.plugins import get_backends

    rows = []
    for name, info in sorted(get_backends().items()):
        missing = info.missing
        rows.append(
            {
                "name": name,
                "plugin": info.plugin,
                "available": not missing,
                "description": info.description,
                "missing": missing,
                "install": info.install_hint if missing else None,
            }
        )
    print_rows(rows, args.json, _text)
    return 0
