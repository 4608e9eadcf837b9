"""Fixtures of the report tests: the numpy runs they report on, trained once per session."""

import pytest
from helpers.report_runs import train_numpy_runs


@pytest.fixture(scope="session")
def report_runs(tmp_path_factory):
    """Two finished numpy runs differing in lora_r and learning rate, the second named with
    markup, the first with a samples.json (helpers/report_runs.py)."""
    return train_numpy_runs(tmp_path_factory.mktemp("report-runs"), tmp_path_factory.getbasetemp() / "cache")
