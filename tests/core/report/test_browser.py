"""The report in a real browser: headless Chromium (Debian's package, which `make install`
installs) opens the file from disk, must log nothing to its console and must draw a page that is
not blank.

Console messages are read from Chromium's own log (``--enable-logging=stderr``), where every
``console.*`` call, uncaught error and Content Security Policy violation appears as an
``INFO:CONSOLE`` line. The report has no script, so any console line means something went wrong:
an injected script or a blocked load. A control page with such faults proves the lines are seen.
Without Chromium this test fails; it never skips.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from loraswitch.core.report import write_report

CHROMIUM = Path(os.environ.get("LORASWITCH_TEST_CHROMIUM", "/usr/bin/chromium"))
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--window-size=1280,2000",
]
CONSOLE_LINE = re.compile(r":CONSOLE[:(\d)]*\] (.*)")


def open_in_chromium(page: Path, screenshot: Path, profile: Path) -> list[str]:
    """Load ``page`` from disk, write a screenshot, return the console messages."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make install` (it installs Debian's chromium package)")
    out = subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={screenshot}", page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert screenshot.is_file(), out.stderr[-2000:]
    return [m.group(1) for line in out.stderr.splitlines() if (m := CONSOLE_LINE.search(line))]


def test_the_console_check_sees_script_errors_and_blocked_loads(tmp_path):
    """The control: a script error, and (in a frame under the report's policy) a blocked script and load."""
    page = tmp_path / "faulty.html"
    page.write_text(
        '<!DOCTYPE html><p>control</p><script>console.error("boom"); notDefined()</script>'
        "<iframe srcdoc=\"<meta http-equiv=Content-Security-Policy content=&quot;default-src 'none'&quot;>"
        '<img src=https://example.invalid/x.png><script>1</script>"></iframe>'
    )
    console = open_in_chromium(page, tmp_path / "faulty.png", tmp_path / "profile")
    assert any('"boom"' in line for line in console), console
    assert any("Uncaught ReferenceError: notDefined" in line for line in console), console
    assert sum("violates the following Content Security Policy" in line for line in console) == 2, console


def test_the_report_opens_without_console_errors_and_draws_a_page(report_runs, tmp_path):
    report = write_report(report_runs, tmp_path / "report.html")  # two runs compared, samples with markup in them
    shot = tmp_path / "report.png"
    console = open_in_chromium(report, shot, tmp_path / "profile")
    assert console == []

    from matplotlib.image import imread

    pixels = (imread(shot)[..., :3] * 255).astype(np.uint8)
    assert pixels.shape[:2] == (2000, 1280)
    colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    dominant = counts.max() / counts.sum()
    assert len(colours) > 200, f"{len(colours)} colours: the page looks blank"  # charts, text, badges
    assert dominant < 0.9, f"one colour covers {dominant:.0%} of the page"
