"""Print the README's config reference table from the schema (tests/test_readme.py keeps them equal).

python tools/config_table.py
"""

import json

from loraswitch.core.config import Config


def config_table() -> str:
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, field in Config.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = default if isinstance(default, str) else json.dumps(default)
        rows.append(f"| `{key}` | `{shown}` | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(config_table())
