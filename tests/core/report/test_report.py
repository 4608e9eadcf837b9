"""`loraswitch report`: one self-contained HTML page per run or per comparison, built from real
numpy-backend runs. Its contents come from the run directory's files, every user string is
escaped, and nothing in the page loads from anywhere. (tests/core/report/test_browser.py opens
it in a real browser.)"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers.report_runs import HOSTILE

from loraswitch.core.cli import main
from loraswitch.core.report import write_report
from loraswitch.core.report.runs import load_runs

pytest.importorskip("loraswitch_numpy", reason="pip install -e examples/loraswitch-numpy")


class Page(HTMLParser):
    """The parsed page: every start tag with its attributes, and the text a reader sees."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    @property
    def tag_names(self) -> set[str]:
        return {tag for tag, _ in self.tags}


@pytest.fixture(scope="module")
def runs(report_runs) -> list[Path]:
    return report_runs


@pytest.fixture(scope="module")
def single(runs, tmp_path_factory) -> str:
    return write_report([runs[0]], tmp_path_factory.mktemp("out") / "single.html").read_text()


@pytest.fixture(scope="module")
def compared(runs, tmp_path_factory) -> str:
    return write_report(runs, tmp_path_factory.mktemp("out") / "compared.html").read_text()


def test_a_run_report_shows_curves_summary_samples_and_config(runs, single):
    page = Page(single)
    text = " ".join("".join(page.text).split())  # whitespace collapsed, as displayed
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert single.count("<svg") == 4
    for title in ("Loss against optimizer step", "Loss against training tokens", "Learning rate", "Throughput"):
        assert title in text
    assert summary["stop_reason"] == "n_steps" and "n_steps" in text
    assert f"{summary['final_eval_loss']:.5g}" in text and f"{summary['final_train_loss']:.5g}" in text
    assert "8 of 8" in text  # steps of n_steps
    assert "0.0% before training → 50.0% with the adapter" in text
    assert "7 <b>bold</b>" in text  # the sample answer before training, as text
    assert "lora_alpha" in text and "Keys that differ" not in text


def test_the_curves_draw_every_step_and_eval_of_metrics_jsonl(runs):
    """The loss chart's data points, read back from the SVG path, are metrics.jsonl's steps and losses."""
    (run,) = load_runs([runs[0]])
    assert [s["step"] for s in run.steps] == list(range(1, 9)) and [e["step"] for e in run.evals] == [4, 8]
    from loraswitch.core.report.charts import report_charts

    (_, loss_svg), *_ = report_charts([run])
    # matplotlib draws each series as one <path d="M x y L x y ...">: 8 train points, 2 eval points
    paths = [p.split('d="')[1].split('"')[0] for p in loss_svg.split("<path")[1:] if 'd="M' in p]
    vertex_counts = sorted(p.count("L") + 1 for p in paths if "z" not in p.lower())
    assert 8 in vertex_counts and 2 in vertex_counts


def test_a_comparison_overlays_the_runs_and_lists_the_config_keys_that_differ(runs, compared):
    text = " ".join(Page(compared).text)
    assert compared.count("<svg") == 4 and "Comparing 2 runs" in text
    differ = compared.split("Keys that differ")[1].split("All keys")[0]
    assert ">lora_r<" in differ and ">learning_rate_multiplier<" in differ
    assert ">lora_alpha<" not in differ and "output_dir" not in differ  # same in both; always different
    assert "run-a: train loss" in compared and "run-&lt;b&gt;$x$: eval loss" in compared  # legends, as SVG text


def test_every_user_string_is_shown_as_text_never_as_markup(runs, compared):
    page = Page(compared)
    assert page.tag_names.isdisjoint({"script", "img", "b", "iframe", "object", "embed", "link"})
    assert not any(name.startswith("on") for _, attrs in page.tags for name in attrs)  # no event handlers
    text = "".join(page.text)
    assert HOSTILE in text  # the sample prompt, verbatim
    assert f"data{HOSTILE[:8]}.jsonl" in text  # a config value
    assert "run-<b>$x$" in text  # a run name, in tables and (escaped by matplotlib) in the charts


def test_the_page_loads_nothing_and_allows_no_script(compared):
    page = Page(compared)
    (csp,) = [
        a["content"] for tag, a in page.tags if tag == "meta" and a.get("http-equiv") == "Content-Security-Policy"
    ]
    assert "default-src 'none'" in csp and "script-src" not in csp
    for tag, attrs in page.tags:
        for name in ("src", "href", "xlink:href", "action", "data"):
            value = attrs.get(name)
            assert value is None or value.startswith(("#", "data:")), f"<{tag} {name}={value!r}>"
    assert "@import" not in compared and "url(http" not in compared


def test_a_run_without_summary_is_reported_as_not_finished(runs, tmp_path):
    import shutil

    copy = tmp_path / "in-progress"
    shutil.copytree(runs[1], copy)
    (copy / "summary.json").unlink()
    html = write_report([copy]).read_text()
    assert "not finished (no summary.json yet)" in html and html.count("<svg") == 4
    assert (copy / "report.html").is_file()  # the default place for one run


def test_runs_with_the_same_name_are_told_apart_by_their_parent(runs, tmp_path):
    import shutil

    for parent in ("torch", "jax"):
        shutil.copytree(runs[0], tmp_path / parent / "run")
    labels = [r.label for r in load_runs([tmp_path / "torch" / "run", tmp_path / "jax" / "run"])]
    assert labels == ["torch/run", "jax/run"]


def test_the_command_writes_the_report_and_prints_its_path(runs, tmp_path, capsys, monkeypatch):
    assert main(["report", str(runs[0])]) == 0
    assert capsys.readouterr().out.strip() == str(runs[0] / "report.html")
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(runs[0]), str(runs[1])]) == 0  # several runs: ./report.html
    assert capsys.readouterr().out.strip() == "report.html" and (tmp_path / "report.html").is_file()
    out = tmp_path / "nested.html"
    assert main(["report", str(runs[0]), "--out", str(out)]) == 0 and out.is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}"], "run directory not found"),
        (["{empty}"], "config.yaml: missing"),
        (["{run}", "{run}"], "the same run directory is given twice"),
    ],
)
def test_bad_run_directories_are_one_line(args, message, runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    where = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "run": runs[0]}
    assert main(["report", *(a.format(**where) for a in args)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
