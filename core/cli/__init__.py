"""The ``loraswitch`` command line: an app on top of the core. ``app.py`` parses and dispatches;
each subcommand is one module under ``commands/``."""

from loraswitch.core.cli.app import main

__all__ = ["main"]
