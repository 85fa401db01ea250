"""Reviewing a study: the terminal table, the offline HTML report and `audiolab sweep show|report`."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import matplotlib.pyplot as plt
import numpy as np
import optuna
import plotly.offline
import pytest
import soundfile as sf
from optuna.trial import TrialState

from audiolab.cli import main
from audiolab.runs.record import read_metrics
from audiolab.sweep.review import (
    baseline_lines,
    format_table,
    objective_names,
    short_labels,
    sort_rows,
    trial_rows,
    write_report,
)
from audiolab.sweep.storage import storage_url
from audiolab.sweep.study import (
    ATTR_BEST_STEP,
    ATTR_FAIL_REASON,
    ATTR_PRUNED_STEP,
    ATTR_RUN_DIR,
    ATTR_RUN_NUMBER,
    open_study,
)
from conftest import run_cli

STUDY = "demo"
OOM = "RuntimeError: CUDA out of memory"
BASELINE = 0.45  # val/spec_loss_input of the fixture's runs: trial 0 (0.5) does worse than doing nothing


def _run_dir(outputs: Path, number: int, status: str, curve: dict[int, float],
             baseline: float | None = BASELINE) -> Path:
    """A run directory as a trial's job leaves it: run.json, metrics.jsonl and samples at each validation,
    each validation line with the do-nothing baseline and val/improvement, as audiolab/train/validate.py writes."""
    run = outputs / f"output{number:02d}"
    samples = run / "samples"
    samples.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"number": number, "status": status, "study": STUDY}))
    lines = []
    for step, value in curve.items():
        val = {"step": step, "val/spec_loss": value}
        if baseline is not None:
            val |= {"val/spec_loss_input": baseline, "val/improvement": 1.0 - value / baseline}
        lines += [{"step": step, "train/loss": 2 * value}, val]
        for role in ("input", "output", "target"):
            sf.write(samples / f"step{step:07d}_clip0_{role}.wav", np.zeros(64, dtype=np.float32), 16000)
        plt.imsave(samples / f"step{step:07d}_spectrograms.png", np.zeros((4, 4)))
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def _trial(study: optuna.Study, outputs: Path, number: int, lr: float, depth: int, curve: dict[int, float],
           status: str, baseline: float | None = BASELINE) -> optuna.Trial:
    study.enqueue_trial({"optim.lr": lr, "model.blocks_per_level": depth})
    trial = study.ask()
    trial.suggest_float("optim.lr", 1e-4, 1.0, log=True)
    trial.suggest_int("model.blocks_per_level", 1, 4)
    trial.set_user_attr(ATTR_RUN_NUMBER, number)
    trial.set_user_attr(ATTR_RUN_DIR, str(_run_dir(outputs, number, status, curve, baseline)))
    for step, value in curve.items():
        trial.report(value, step)
    return trial


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    """outputs/ holding study `demo` (trials: 0 complete 0.5, 1 pruned at step 2, 2 complete 0.3, 3 failed)."""
    outputs = tmp_path / "outputs"
    study = open_study(storage_url(None, outputs), STUDY, create=True, directions=["minimize"])
    study.set_user_attr("objectives", ["val/spec_loss"])
    study.set_user_attr("search_space", {"optim.lr": "tag(log, interval(1e-4, 1))"})

    first = _trial(study, outputs, 1, 1e-3, 2, {2: 0.7, 4: 0.5}, "completed")
    first.set_user_attr(ATTR_BEST_STEP, 4)
    study.tell(first, 0.5)
    # Lower than both final values, but from step 2 only: it must not rank above a completed trial.
    pruned = _trial(study, outputs, 2, 0.5, 1, {2: 0.25}, "pruned")
    pruned.set_user_attr(ATTR_PRUNED_STEP, 2)
    study.tell(pruned, state=TrialState.PRUNED)
    best = _trial(study, outputs, 3, 0.0012345678, 3, {2: 0.6, 4: 0.4, 6: 0.3}, "completed")
    best.set_user_attr(ATTR_BEST_STEP, 6)
    study.tell(best, 0.3)
    failed = _trial(study, outputs, 4, 0.2, 1, {}, "failed")
    failed.set_user_attr(ATTR_FAIL_REASON, OOM + "\n(while training step 1)")
    study.tell(failed, state=TrialState.FAIL)
    return outputs


def _study(outputs: Path) -> optuna.Study:
    return open_study(storage_url(None, outputs), STUDY)


def _table(text: str) -> list[dict[str, str]]:
    """The table's data lines as dicts keyed by header (cells are separated by two or more spaces)."""
    all_lines = text.splitlines()
    header, _, *lines = all_lines[next(i for i, ln in enumerate(all_lines) if ln.startswith("#  ")):]
    names = re.split(r"\s{2,}", header.strip())
    return [dict(zip(names, re.split(r"\s{2,}", line.strip()), strict=True)) for line in lines]


def test_table_is_best_first_and_shows_states_pruned_step_and_fail_reason(outputs: Path) -> None:
    rows = trial_rows(_study(outputs))
    table = _table(format_table(rows))
    assert [r["#"] for r in table] == ["2", "0", "1", "3"]  # completed by value, then pruned, then failed
    assert [r["state"] for r in table] == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    best, _, pruned, failed = table
    assert best["value"] == "0.3" and best["best"] == "6" and best["run"] == "output03"
    assert "optim.lr=0.001235" in best["params"] and "model.blocks_per_level=3" in best["params"]
    assert best["run dir"] == str(outputs / "output03")
    assert pruned["pruned@"] == "2" and pruned["value"] == "0.25" and pruned["best"] == "-"
    assert failed["note"] == OOM and failed["value"] == "-"
    assert [r["#"] for r in _table(format_table(rows, sort="number"))] == ["0", "1", "2", "3"]


def test_sort_follows_each_objectives_direction() -> None:
    rows: list[dict[str, Any]] = [{"number": n, "state": "COMPLETE", "values": v}
                                  for n, v in enumerate([[1.0, 5.0], [3.0, 1.0], [3.0, 2.0], None])]
    assert [r["number"] for r in sort_rows(rows, "value", ["minimize", "minimize"])] == [0, 1, 2, 3]
    assert [r["number"] for r in sort_rows(rows, "value", ["maximize", "maximize"])] == [2, 1, 0, 3]
    with pytest.raises(ValueError, match="sort"):
        sort_rows(rows, "params")


def _embedded_trials(page: str) -> list[dict[str, Any]]:
    match = re.search(r'<script type="application/json" id="audiolab-trials">(.*?)</script>', page, re.S)
    assert match, "no embedded trial table"
    return json.loads(match[1])


def test_report_is_one_offline_html_with_figures_curves_and_links(outputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports" / "demo_report.html"
    assert write_report(_study(outputs), out, top_k=3) == out
    page = out.read_text()

    trials = _embedded_trials(page)
    assert [t["number"] for t in trials] == [0, 1, 2, 3]
    assert Counter(t["state"] for t in trials) == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 1}
    assert trials[1]["pruned_step"] == 2 and trials[3]["fail_reason"].startswith(OOM)
    assert trials[2]["values"] == [0.3] and trials[2]["run_dir"] == str(outputs / "output03")

    bundle = plotly.offline.get_plotlyjs()
    assert page.count(bundle[:500]) == 1  # plotly.js inline, exactly once
    assert page.count("Plotly.newPlot(") == 4  # history, intermediate values, parallel coordinates, importances
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert "https://cdn" not in page.replace(bundle, "")  # the bundle itself names tile servers it never calls
    assert '"symbol":"x"' in page  # the pruned trial's end is marked
    for title in ("Study demo", "Optimisation history", "Intermediate values", "Parallel coordinates",
                  "Parameter importances", "2 complete, 1 pruned, 1 fail", str(outputs / "optuna.db")):
        assert title in page

    images = [unquote(src) for src in re.findall(r'<img src="([^"]+)"', page)]
    assert "demo_report_files/validation_curves.png" in images
    for src in images:
        assert (out.parent / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    hrefs = {unquote(h) for h in re.findall(r'href="([^"]+)"', page)}
    for run in ("output01", "output02", "output03", "output04"):
        assert (out.parent / f"../outputs/{run}/").resolve() == outputs / run
        assert f"../outputs/{run}/" in hrefs
    # Latest samples only, and only for the top 3 (trials 2, 0, 1): the failed trial's run has none linked.
    assert "../outputs/output01/samples/step0000004_clip0_output.wav" in hrefs
    assert "../outputs/output01/samples/step0000004_clip0_target.wav" in hrefs
    assert "../outputs/output03/samples/step0000006_spectrograms.png" in hrefs
    assert "../outputs/output01/samples/step0000002_clip0_output.wav" not in hrefs
    assert not any("output04/samples" in h for h in hrefs)
    # the compare page's listening section for the top 3: per clip, input + one output per trial + target
    listen = page[page.index('<section class="al-listen">'):]
    listen = listen[:listen.index("</section>")]
    assert "#2 output03" in listen and "#0 output01" in listen and "#1 output02" in listen
    assert listen.count("<audio ") == listen.count('<th class="clip">') * 5
    assert 'src="data:audio/wav;base64,' in listen


def test_report_notes_figures_a_small_study_cannot_have(tmp_path: Path) -> None:
    study = open_study(storage_url(None, tmp_path), "tiny", create=True, directions=["minimize"])
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    study.tell(trial, 1.0)
    page = write_report(study, tmp_path / "tiny.html").read_text()
    assert "needs at least 2 completed trials" in page
    assert "No trial reported intermediate values." in page
    assert page.count(plotly.offline.get_plotlyjs()[:500]) == 1
    assert len(_embedded_trials(page)) == 1


def test_multi_objective_report_draws_the_pareto_front(tmp_path: Path) -> None:
    study = open_study(storage_url(None, tmp_path), "multi", create=True, directions=["minimize", "minimize"])
    study.set_user_attr("objectives", ["val/spec_loss", "parameters"])
    for x in (0.1, 0.5, 0.9):
        trial = study.ask()
        study.tell(trial, [trial.suggest_float("x", 0.0, 1.0) + x, 1.0 - x])
    page = write_report(study, tmp_path / "multi.html").read_text()
    assert "<h2>Pareto front</h2>" in page and "Optimisation history: parameters" in page
    assert len(_embedded_trials(page)) == 3
    assert ", " in _table(format_table(trial_rows(study)))[0]["value"]


def test_cli_show_and_report(outputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "show", STUDY, "--outputs", str(outputs), "--sort", "number"]) == 0
    shown = capsys.readouterr().out
    assert "study demo" in shown and "4 trials: 2 complete, 1 pruned, 1 fail" in shown
    assert [r["#"] for r in _table(shown.split("\n", 1)[1])] == ["0", "1", "2", "3"]

    assert main(["sweep", "report", STUDY, "--outputs", str(outputs), "--top-k", "1"]) == 0
    written = Path(capsys.readouterr().out.strip())
    assert written == (outputs / "multirun" / "demo_report.html").absolute()
    assert len(_embedded_trials(written.read_text())) == 4

    custom = outputs.parent / "elsewhere.html"
    assert main(["sweep", "report", STUDY, "--storage", storage_url(None, outputs), "--out", str(custom)]) == 0
    assert custom.is_file() and (outputs.parent / "elsewhere_files" / "validation_curves.png").is_file()


def test_cli_names_the_studies_there_when_one_is_missing(outputs: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "show", "nope", "--outputs", str(outputs)]) == 2
    err = capsys.readouterr().err.strip()
    assert "'nope'" in err and "demo" in err and "\n" not in err

    empty = tmp_path / "empty"
    assert main(["sweep", "report", "nope", "--outputs", str(empty)]) == 2
    assert "no storage" in capsys.readouterr().err and not empty.exists()  # nothing created by looking


def test_cli_sweep_rejects_extra_arguments(outputs: Path) -> None:
    for extra in (["a=1"], ["--bogus"]):
        with pytest.raises(SystemExit) as exit_:
            main(["sweep", "show", STUDY, "--outputs", str(outputs), *extra])
        assert exit_.value.code == 2


def test_study_names_its_objectives_for_the_dashboard(tmp_path: Path) -> None:
    url = storage_url(None, tmp_path)
    open_study(url, "single", create=True, directions=["minimize"], metric_names=["val/spec_loss"])
    open_study(url, "multi", create=True, directions=["minimize", "minimize"],
               metric_names=["val/spec_loss", "step_time"])
    # Read back through a fresh handle on the storage, as optuna-dashboard does.
    assert open_study(url, "single").metric_names == ["val/spec_loss"]
    multi = open_study(url, "multi")
    assert multi.metric_names == ["val/spec_loss", "step_time"]
    assert objective_names(multi) == ["val/spec_loss", "step_time"]  # no "objectives" user attr: the names serve

    # A study made before the names existed gets them the next time a sweep opens it.
    open_study(url, "old", create=True, directions=["minimize"])
    assert open_study(url, "old").metric_names is None
    open_study(url, "old", create=True, directions=["minimize"], metric_names=["val/spec_loss"])
    assert open_study(url, "old").metric_names == ["val/spec_loss"]


def test_show_states_the_baseline_once_and_marks_worse_trials(outputs: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "show", STUDY, "--outputs", str(outputs)]) == 0
    shown = capsys.readouterr().out
    assert shown.count("do nothing: 0.45000 (val/spec_loss_input") == 1
    assert "1 of 3 trials with a value are worse than doing nothing: #0" in shown
    assert "all 3" not in shown
    rows = {r["#"]: r for r in _table(shown)}
    assert rows["0"]["improvement"] == "-0.1111" and rows["0"]["note"] == "worse than doing nothing"
    assert rows["2"]["improvement"] == "+0.3333" and rows["2"]["note"] == "-"
    assert rows["1"]["improvement"] == "+0.4444" and rows["1"]["note"] == "-"  # pruned at step 2, from step 2
    assert rows["3"]["improvement"] == "-" and rows["3"]["note"] == OOM  # failed before validating


def _baseline_study(tmp_path: Path, curves: list[tuple[dict[int, float], int]], baseline: float | None) -> optuna.Study:
    """Completed trials with the given (curve, best step), their runs recording `baseline` (or none)."""
    outputs = tmp_path / "outputs"
    study = open_study(storage_url(None, outputs), "base", create=True, directions=["minimize"],
                       metric_names=["val/spec_loss"])
    for number, (curve, best_step) in enumerate(curves, 1):
        trial = _trial(study, outputs, number, 10.0 ** -number, 1 + number % 3, curve, "completed", baseline)
        trial.set_user_attr(ATTR_BEST_STEP, best_step)
        study.tell(trial, curve[best_step])
    return study


def test_all_trials_worse_than_doing_nothing_say_so(tmp_path: Path) -> None:
    study = _baseline_study(tmp_path, [({2: 0.9, 4: 0.8}, 4), ({2: 0.7}, 2)], baseline=0.6)
    lines = baseline_lines(trial_rows(study))
    assert lines[0].startswith("do nothing: 0.60000")
    assert lines[1].startswith("all 2 trials with a value are worse than doing nothing: the best val/improvement "
                               "is -0.1667")
    page = write_report(study, tmp_path / "base.html").read_text()
    assert '<li class="worse-summary">all 2 trials with a value are worse than doing nothing' in page
    assert page.count("<li>do nothing: 0.60000") == 1
    assert page.count('<tr class="worse">') == 4  # both trials, in the top table and in the table of all
    assert _embedded_trials(page)[0]["worse"] is True


def test_improvement_is_read_at_the_best_step_and_missing_baselines_stay_quiet(tmp_path: Path) -> None:
    # Best at step 2 (0.3, below the input's 0.45) even though the last validation (0.5) is above it.
    study = _baseline_study(tmp_path / "a", [({2: 0.3, 4: 0.5}, 2)], baseline=0.45)
    (row,) = trial_rows(study)
    assert row["spec_loss_input"] == 0.45 and row["improvement"] == pytest.approx(1 - 0.3 / 0.45)
    assert not row["worse"] and len(baseline_lines([row])) == 1

    # Runs from before val/spec_loss_input was recorded: no baseline line, no verdict.
    old = _baseline_study(tmp_path / "b", [({2: 0.9}, 2)], baseline=None)
    (row,) = trial_rows(old)
    assert row["spec_loss_input"] is None and row["improvement"] is None and not row["worse"]
    assert baseline_lines([row]) == []
    assert _table(format_table([row]))[0]["improvement"] == "-"


def test_report_plays_the_input_beside_output_and_target_and_shows_big_spectrograms(outputs: Path,
                                                                                    tmp_path: Path) -> None:
    out = tmp_path / "reports" / "demo_report.html"
    page = write_report(_study(outputs), out, top_k=3).read_text()
    block = re.search(r'<div class="trial-samples" id="samples-trial2">(.*?)</div>', page, re.S)
    assert block, "no samples block for the best trial"
    sources = [unquote(s) for s in re.findall(r'<audio controls preload="none" src="([^"]+)"', block[1])]
    assert sources == [f"../outputs/output03/samples/step0000006_clip0_{role}.wav"
                       for role in ("input", "output", "target")]
    assert '<a href="#samples-trial2">' in page  # the top table links down to it

    (img,) = re.findall(r"<a href=\"([^\"]+)\" target=\"_blank\"><img class=\"spectrograms\" ([^>]*)>", block[1])
    href, attrs = img
    assert 'width="360"' not in attrs and f'src="{href}"' in attrs  # natural size; a click opens it alone
    assert (out.parent / unquote(href)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The baseline: once in the header, as a dotted line in the history and intermediate-values figures,
    # and the worse trial marked in the table of all trials.
    assert page.count("<li>do nothing: 0.45000") == 1
    assert page.count('"name":"do nothing (0.45000)"') == 2
    worse = re.findall(r'<tr class="worse">(.*?)</tr>', page)
    assert len(worse) == 2  # trial 0 (output01), in the top table and in the table of all trials
    assert all("output01" in row and "worse than doing nothing" in row and "-0.1111" in row for row in worse)
    assert "<th>val/improvement</th>" in page


def test_long_parameter_names_are_shortened_in_the_figures(tmp_path: Path) -> None:
    assert short_labels(["loss.terms.l1.weight", "loss.terms.mrstft.weight", "optim.lr", "x"]) == {
        "loss.terms.l1.weight": "l1.weight", "loss.terms.mrstft.weight": "mrstft.weight", "optim.lr": "optim.lr",
        "x": "x"}
    # Names whose last two parts agree keep as much more as tells them apart.
    assert short_labels(["loss.a.scale.weight", "loss.b.scale.weight", "c.weight"]) == {
        "loss.a.scale.weight": "a.scale.weight", "loss.b.scale.weight": "b.scale.weight", "c.weight": "c.weight"}

    study = open_study(storage_url(None, tmp_path), "labels", create=True, directions=["minimize"],
                       metric_names=["val/spec_loss"])
    for i in range(4):
        trial = study.ask()
        l1 = trial.suggest_float("loss.terms.l1.weight", 0.0, 1.0)
        mr = trial.suggest_float("loss.terms.mrstft.weight", 0.0, 1.0)
        study.tell(trial, l1 + 2 * mr + i)
    from audiolab.sweep.review import relabel_importances, relabel_parallel_coordinate

    vis = optuna.visualization
    parallel = relabel_parallel_coordinate(vis.plot_parallel_coordinate(study, target_name="val/spec_loss"), study)
    assert list(parallel.layout.xaxis.ticktext) == ["val/spec_loss", "l1.weight", "mrstft.weight"]
    assert parallel.layout.margin.l >= 60 and parallel.layout.margin.b >= 90
    bars = relabel_importances(vis.plot_param_importances(study))
    assert sorted(bars.data[0].y) == ["l1.weight", "mrstft.weight"]
    assert all("loss.terms." in hover for hover in bars.data[0].hovertemplate)  # the full name on hover

    page = write_report(study, tmp_path / "labels.html").read_text()
    assert "loss.terms.l1.we..." not in page  # Optuna's own cut
    assert "<code>l1.weight</code> = <code>loss.terms.l1.weight</code>" in page


def test_a_real_sweep_names_its_objective_and_shows_the_input_baseline(tmp_path: Path, cli_env: dict[str, str],
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    outputs = tmp_path / "outputs"
    proc = run_cli(["hparams_search=lr_depth_lossw", "debug=fast", "logger=none", f"paths.outputs={outputs}",
                    "trainer.max_steps=2", "trainer.val_every=2", "hydra.sweeper.n_trials=1"], cli_env, tmp_path,
                   timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = open_study(storage_url(None, outputs), "lr_depth_lossw")
    assert study.metric_names == ["val/spec_loss"]  # what optuna-dashboard shows instead of "Objective 0"

    (trial,) = study.get_trials(deepcopy=False)
    (val,) = [m for m in read_metrics(Path(trial.user_attrs[ATTR_RUN_DIR])) if "val/spec_loss" in m]
    assert main(["sweep", "show", "lr_depth_lossw", "--outputs", str(outputs)]) == 0
    shown = capsys.readouterr().out
    assert f"do nothing: {val['val/spec_loss_input']:.5f}" in shown
    assert _table(shown)[0]["improvement"] == f"{val['val/improvement']:+.4f}"
