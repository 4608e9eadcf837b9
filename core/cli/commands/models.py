"""List the named model sources plugins offer (builtin:..., random:...) and where each is
cached. Any local Hugging Face directory works too: `--model path/to/dir`."""

from __future__ import annotations

from loraswitch.core.cli.commands._listing import add_json_flag, print_rows

HELP = "list built-in and random model sources and their cache paths"
add_arguments = add_json_flag  # --json is its only option


def run(args) -> int:
    from loraswitch.core.plugins import call_hook

    rows = []

    def register(name, description, cached_path=None):
        rows.append(
            {
                "name": name,
                "description": description,
                "cached_path": str(cached_path) if cached_path is not None else None,
            }
        )

    call_hook("register_model_sources", register=register)
    print_rows(
        rows,
        args.json,
        lambda row: (
            f"{row['name']:<24} {row['description']}\n"
            f"{'':<24} {row['cached_path'] or 'not cached yet (built on first use)'}"
        ),
    )
    return 0
