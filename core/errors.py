"""One exception type for anything the user can fix: the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """Bad input (config, data, model directory, checkpoint, plugin). The message names the
    file, key or plugin and the rule that was broken; it is shown without a traceback."""

    exit_code = 2
