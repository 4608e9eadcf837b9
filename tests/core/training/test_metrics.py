"""Answer metrics (core/training/metrics.py): the built-ins' values, a plugin's metric through the
``register_metrics`` hook, clashing names and failing metrics as one-line errors, and
``loraswitch evaluate`` writing every example with its metrics into the run directory."""

from __future__ import annotations

import json

import pytest

from loraswitch.core import hookimpl
from loraswitch.core.errors import UserError
from loraswitch.core.plugins import get_plugin_manager
from loraswitch.core.training.metrics import choose_metrics, exact_match, get_metrics, json_valid, score, token_f1

pytestmark = pytest.mark.usefixtures("isolated_env")


def test_builtin_values():
    assert exact_match(" 4\n", "4") == 1.0 and exact_match("four", "4") == 0.0
    assert json_valid('{"a": [1, 2]}', "") == 1.0 and json_valid('{"a": ', "") == 0.0 and json_valid("", "") == 0.0
    assert json_valid("[" * 100_000, "") == 0.0  # too deep for json: not valid, not a crash
    assert token_f1("The cat sat", "the cat sat") == 1.0
    assert token_f1("cat", "the cat sat") == pytest.approx(2 * 1 * (1 / 3) / (1 + 1 / 3))
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)  # counts, not sets: 2 shared of 3 and 3
    assert token_f1("dog", "the cat") == 0.0 and token_f1("", "") == 1.0 and token_f1("", "x") == 0.0


class Plugin:
    @hookimpl
    def register_metrics(self, register):
        register("first_char", lambda p, r: float(p[:1] == r[:1]), description="same first character")


def test_a_plugin_adds_a_metric_and_names_clash():
    get_plugin_manager().register(Plugin(), name="mine")
    metrics = get_metrics()
    assert {"exact_match", "json_valid", "token_f1", "first_char"} <= set(metrics)
    assert metrics["first_char"].plugin == "mine" and metrics["first_char"].fn("ab", "ax") == 1.0
    assert list(choose_metrics(["token_f1", "first_char"])) == ["token_f1", "first_char"]
    with pytest.raises(UserError, match=r"--metrics: unknown metric 'bleu'; registered: exact_match, first_char"):
        choose_metrics(["bleu"])

    class Clash:
        @hookimpl
        def register_metrics(self, register):
            register("token_f1", token_f1)

    get_plugin_manager().register(Clash(), name="clash")
    with pytest.raises(UserError, match=r'metric "token_f1" is registered by both plugin ".*" and plugin ".*"'):
        get_metrics()


def test_a_failing_metric_names_the_example_and_plugin():
    from loraswitch.core.training.metrics import MetricInfo

    broken = MetricInfo("broken", lambda p, r: {}["x"], "mine")
    with pytest.raises(UserError, match=r'^d\.jsonl:3: metric "broken" of plugin "mine" failed: KeyError'):
        score(broken, "a", "b", "d.jsonl:3")


def test_evaluate_writes_each_example_and_the_means(tmp_path, capsys):
    from loraswitch.core.cli import main

    data = tmp_path / "train.jsonl"
    rows = [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(10)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    args = ["--backend", "numpy", "--model", "random:tiny", "--data", str(data), "--output_dir", str(run)]
    assert main(["train", *args, "--n_steps", "2", "--batch_size", "2", "--lora_r", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json", "--max_new_tokens", "3", "--generate_batch_size", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    lines = [json.loads(line) for line in (run / "evaluation.jsonl").read_text().splitlines()]
    assert len(lines) == result["generated_examples"] == 2  # the validation split of 10 at 0.8
    for line in lines:
        assert line["reference"] == str(int(line["prompt"].split("+")[0]) + 1)
        assert line["where"].startswith(f"{data}:")
        assert line["exact_match"] == float(line["prediction"] == line["reference"])
        assert line["token_f1"] == token_f1(line["prediction"], line["reference"])
    for name in ("exact_match", "json_valid", "token_f1"):
        assert result["metrics"][name] == pytest.approx(sum(line[name] for line in lines) / len(lines))
    assert json.loads((run / "evaluation.json").read_text())["metrics"] == result["metrics"]
    assert main(["evaluate", str(run), "--metrics", "nope"]) == 2
    capsys.readouterr()
    # a bare adapter on a CSV with other column names: --data_fields, --out
    (tmp_path / "qa.csv").write_text("question,answer\n1+1=,2\n2+1=,3\n5+1=,6\n")
    out = tmp_path / "answers.jsonl"
    argv = ["evaluate", "--adapter", str(run / "adapter"), "--backend", "numpy", "--data", str(tmp_path / "qa.csv")]
    argv += ["--data_fields", "{prompt: question, completion: answer}", "--out", str(out), "--json"]
    argv += ["--max_new_tokens", "2", "--metrics", "exact_match"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["generated_examples"] == 3 and list(result["metrics"]) == ["exact_match"]
    assert [json.loads(line)["where"] for line in out.read_text().splitlines()] == [
        f"{tmp_path / 'qa.csv'}: row {i}" for i in range(3)
    ]
