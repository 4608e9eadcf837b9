"""Write an HTML report of one run, or compare several runs on one page.

  loraswitch report runs/quickstart                         # -> runs/quickstart/report.html
  loraswitch report runs/torch runs/jax --out compare.html  # curves overlaid, differing config keys

The page is one self-contained file: train and eval loss against step and against tokens, the
learning rate, tokens/s, the summary and stop reason, the resolved config (for several runs, the
keys that differ), and the quickstart's sample answers before and after training. It has no
script and loads nothing from the network, so it can be mailed, archived or opened offline.
"""

from __future__ import annotations

HELP = "write a self-contained HTML report of one run, or several runs compared"


def add_arguments(p) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one run directory, or several to compare")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="where to write (default: RUN_DIR/report.html for one run, ./report.html for several)",
    )


def run(args) -> int:
    from loraswitch.core.report import write_report

    path = write_report(args.run_dirs, args.out)
    print(path)
    return 0
