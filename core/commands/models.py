"""List the named model sources plugins offer (builtin:..., random:...) and where each is
cached. Any local Hugging Face directory works too: `--model path/to/dir`."""
from __future__ import annotations

HELP = "list built-in and random model sources and their cache paths"


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def run(args) -> int:
    import json

    from ..plugins import call_hook

    rows = []

    def register(name, description, cached_path=None):
        rows.append({"name": name, "description": description,
                     "cached_path": str(cached_path) if cached_path is not None else None})

    call_hook("register_model_sources", register=register)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            where = row["cached_path"] or "not cached yet (built on first use)"
            print(f"{row['name']:<24} {row['description']}\n{'':<24} {where}")
    return 0
