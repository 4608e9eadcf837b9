"""YAML and TOML text from the user (config files, a run's config.yaml, LORASWITCH_* values and
flags), parsed with one-line errors naming where the text came from.

Both parsers recurse once per nesting level, so ``[[[[...`` raises RecursionError after ~1000
levels; that is reported as the input's fault, like a syntax error. YAML is read with
``safe_load`` only: no tags that construct Python objects.
"""

from __future__ import annotations

from typing import Any

from loraswitch.core.errors import UserError


def load_yaml(text: str, where: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{where}{at}: invalid YAML: {getattr(e, 'problem', None) or e}") from e
    except RecursionError:
        raise UserError(f"{where}: invalid YAML: nested too deeply") from None


def load_toml(text: str, where: str) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{where}: invalid TOML: {e}") from e
    except RecursionError:
        raise UserError(f"{where}: invalid TOML: nested too deeply") from None
