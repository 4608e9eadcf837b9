"""One module per ``loraswitch`` subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args)``.
A module with ``TAKES_OVERRIDES = True`` receives ``args.overrides``: the ``--KEY VALUE`` config
overrides, parsed by ``core.config.parse_cli_overrides``. Heavy imports stay inside ``run``."""
