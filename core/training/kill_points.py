"""Named crash points for the kill-anywhere tests (a testing aid, not a user feature).

A run only proves it survives ``kill -9`` at any instant if a test can put the kill at the
instants that matter -- between two micro-steps of a window, between eval batches, between two
files of a checkpoint -- every time, not when a timer happens to fire. With

    LORASWITCH_TEST_KILL_AT=step:3:micro:1 loraswitch train ...          # SIGKILL itself there
    LORASWITCH_TEST_KILL_AT=eval:6:batch:0@SIGTERM loraswitch train ...  # or send another signal

the process signals itself the first time the code reaches that point. The points are:

    step:N:micro:M      before micro-step M (0-based) of optimizer step N (1-based, as in metrics)
    step:N:applied      after step N's update, before its metrics line and checkpoint
    eval:N:batch:B      before eval batch B (0-based) of the eval at step N
    checkpoint:N:adapter   checkpoint N: adapter/ written, backend_state/ not yet
    checkpoint:N:files     checkpoint N: every file but trainer_state.json written (tmp dir)
    checkpoint:N:complete  checkpoint N renamed into place, older ones not yet pruned
    replace:NAME        files.atomic.replace_dir: the old NAME moved aside, the new one not yet in place
    final:summary       the final adapter copied, summary.json not yet written

The variable is read once at import; when it is unset (always, outside tests) ``reached``
returns at its first line.
"""

from __future__ import annotations

import os
import signal

ENV = "LORASWITCH_TEST_KILL_AT"
_point, _, _signal = (os.environ.get(ENV) or "").partition("@")
_fired = False


def reached(*where: object) -> None:
    """Signal this process if ``":".join(where)`` is the point named in LORASWITCH_TEST_KILL_AT."""
    global _fired
    if not _point or _fired:
        return
    if ":".join(str(w) for w in where) == _point:
        _fired = True
        os.kill(os.getpid(), getattr(signal, _signal or "SIGKILL"))
