"""Optuna sweeps through the real CLI: `python run.py hparams_search=lr_depth_lossw ...` on tiny CPU runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState

from audiolab.sweep.storage import storage_url
from audiolab.sweep.study import open_study
from conftest import REPO, run_cli

STUDY = "lr_depth_lossw"


@pytest.fixture
def sweep_args(outputs: Path) -> list[str]:
    """A fast lr_depth_lossw sweep: debug-sized runs, two validations each, quick heartbeats."""
    return [f"hparams_search={STUDY}", "debug=fast", "logger=none", f"paths.outputs={outputs}",
            "trainer.max_steps=4", "trainer.val_every=2", "hydra.sweeper.heartbeat_interval=1",
            "hydra.sweeper.grace_period=4"]


@pytest.fixture
def env(cli_env: dict[str, str]) -> dict[str, str]:
    """CLI environment with tests/ importable, for the fault-injecting models in helpers.py."""
    return cli_env | {"PYTHONPATH": str(REPO / "tests")}


def trials_of(outputs: Path, storage: str | None = None, study: str = STUDY) -> list[FrozenTrial]:
    """The study's trials, read back from its storage."""
    return open_study(storage_url(storage, outputs), study).get_trials(deepcopy=False)


def run_json(trial: FrozenTrial) -> dict:
    """run.json of the run a trial launched."""
    return json.loads((Path(trial.user_attrs["run_dir"]) / "run.json").read_text())


def check_identity(trials: list[FrozenTrial], outputs: Path) -> None:
    """Each started trial has its own numbered run, and each run names its study and trial."""
    started = [t for t in trials if "run_number" in t.user_attrs]
    numbers = [t.user_attrs["run_number"] for t in started]
    assert len(numbers) == len(set(numbers)), f"a run number was used twice: {numbers}"
    for t in started:
        record = run_json(t)
        assert Path(t.user_attrs["run_dir"]) == outputs / f"output{t.user_attrs['run_number']:02d}"
        assert (record["study"], record["trial"], record["number"]) == (STUDY, t.number, t.user_attrs["run_number"])
    run_dirs = sorted(p.name for p in outputs.glob("output*"))
    assert len(run_dirs) == len(started), f"runs on disk {run_dirs} vs {len(started)} started trials"


def test_tpe_sweep_prunes_a_bad_learning_rate_and_reports(sweep_args: list[str], outputs: Path, env: dict[str, str],
                                                          tmp_path: Path) -> None:
    enqueue = 'hydra.sweeper.enqueue=["optim.lr=1e-3","optim.lr=2e-3","optim.lr=0.5"]'
    proc = run_cli([*sweep_args, "hydra.sweeper.n_trials=6", "hydra.sweeper.pruner.n_startup_trials=2", enqueue],
                   env, tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = trials_of(outputs)
    assert len(trials) == 6 and all(t.state.is_finished() for t in trials)
    check_identity(trials, outputs)

    bad = trials[2]
    assert bad.params["optim.lr"] == 0.5
    assert bad.state == TrialState.PRUNED, f"lr=0.5 was {bad.state.name}: {bad.intermediate_values}"
    assert bad.user_attrs["pruned_step"] == 2 and run_json(bad)["status"] == "pruned"
    assert list(bad.intermediate_values) == [2]  # reported at the training step, then stopped
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    assert completed and all(list(t.intermediate_values) == [2, 4] for t in completed)
    best = min(run_json(t)["best_val_spec_loss"] for t in completed)
    study = open_study(storage_url(None, outputs), STUDY)
    assert study.best_value == best

    sweep_dir = outputs / "multirun" / "sweep01"
    assert (sweep_dir / "multirun.yaml").is_file() and (sweep_dir / "snapshot" / "conf" / "config.yaml").is_file()
    assert len((sweep_dir / "runs.jsonl").read_text().splitlines()) == 6

    report = tmp_path / "report.html"
    proc = run_cli(["sweep", "report", STUDY, "--outputs", str(outputs), "--out", str(report)], env, tmp_path,
                   script="audiolab/__main__.py")
    assert proc.returncode == 0, proc.stderr
    html = report.read_text()
    start = html.index('<script type="application/json" id="audiolab-trials">')
    embedded = json.loads(html[html.index(">", start) + 1:html.index("</script>", start)])
    assert len(embedded) == 6 and sum(row["state"] == "PRUNED" for row in embedded) >= 1
    shown = run_cli(["sweep", "show", STUDY, "--outputs", str(outputs)], env, tmp_path, script="audiolab/__main__.py")
    assert shown.returncode == 0 and "PRUNED" in shown.stdout and "output03" in shown.stdout


def test_rerunning_the_command_continues_the_study_to_its_budget(sweep_args: list[str], outputs: Path,
                                                                  env: dict[str, str], tmp_path: Path) -> None:
    first = run_cli([*sweep_args, "hydra.sweeper.n_trials=3"], env, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(trials_of(outputs)) == 3
    second = run_cli([*sweep_args, "hydra.sweeper.n_trials=5"], env, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    trials = trials_of(outputs)
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    check_identity(trials, outputs)
    # The second command's trials are new numbers and new runs, in their own sweep directory.
    assert [t.user_attrs["run_number"] for t in trials] == [1, 2, 3, 4, 5]
    assert (outputs / "multirun" / "sweep02" / "runs.jsonl").read_text().count("\n") == 2
    # A resumed sampler does not replay the first command's draws.
    assert trials[3].params != trials[0].params


def test_two_workers_share_a_journal_file_without_a_batch_barrier(sweep_args: list[str], outputs: Path,
                                                                  env: dict[str, str], tmp_path: Path) -> None:
    journal = f"journal:{outputs}/optuna.journal"
    proc = run_cli([*sweep_args, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_workers=2",
                    f"hydra.sweeper.storage={journal}"], env, tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = trials_of(outputs, journal)
    assert len(trials) == 6 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    check_identity(trials, outputs)
    log = proc.stdout + proc.stderr
    assert "(worker 0)" in log and "(worker 1)" in log
    # Both workers were busy at once: some two trials overlapped in time.
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
    assert not (outputs / "optuna.db").exists()


def test_processes_started_by_hand_on_one_study_draw_different_parameters(sweep_args: list[str], outputs: Path,
                                                                          env: dict[str, str], tmp_path: Path) -> None:
    """The several-machines recipe: the same command started 3 times; no two trials may share parameters."""
    journal = f"journal:{outputs}/optuna.journal"
    cmd = [sys.executable, str(REPO / "run.py"), *sweep_args, "hydra.sweeper.n_trials=6",
           f"hydra.sweeper.storage={journal}", "trainer.threads=1"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    trials = trials_of(outputs, journal)
    assert len(trials) >= 6
    drawn = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(drawn)) == len(drawn), drawn
    assert open_study(storage_url(journal, outputs), STUDY).user_attrs["sampler_starts"] == 3


def test_failed_trials_keep_their_reason_and_the_sweep_goes_on(outputs: Path, env: dict[str, str],
                                                               tmp_path: Path) -> None:
    models = "choice(audiolab.models.convnext1d.ConvNeXtUNet1d,helpers.NaNAfter,helpers.RaiseAfter)"
    enqueue = ('hydra.sweeper.enqueue=["model._target_=audiolab.models.convnext1d.ConvNeXtUNet1d",'
               '"model._target_=helpers.NaNAfter","model._target_=helpers.RaiseAfter"]')
    # A sweep on the command line joins the preset's search space.
    proc = run_cli([f"hparams_search={STUDY}", "debug=fast", "logger=none", f"paths.outputs={outputs}",
                    f"model._target_={models}", "hydra.sweeper.n_trials=4", enqueue],
                   env, tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = trials_of(outputs)
    assert len(trials) == 4
    by_model = {t.number: t.params["model._target_"].rsplit(".", 1)[-1] for t in trials}
    states = {by_model[t.number]: t.state for t in trials[:3]}
    assert states == {"ConvNeXtUNet1d": TrialState.COMPLETE, "NaNAfter": TrialState.FAIL,
                      "RaiseAfter": TrialState.FAIL}
    reasons = {by_model[t.number]: t.user_attrs["fail_reason"] for t in trials if t.state == TrialState.FAIL}
    assert "NonFiniteLossError" in reasons["NaNAfter"] and "non-finite loss" in reasons["NaNAfter"]
    assert "RuntimeError: injected fault" in reasons["RaiseAfter"]
    for t in trials:
        if t.state == TrialState.FAIL:
            assert run_json(t)["status"] == "failed"
    assert trials[3].state.is_finished()


def test_max_failures_stops_the_sweep_with_a_message(outputs: Path, env: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli([f"hparams_search={STUDY}", "debug=fast", "logger=none", f"paths.outputs={outputs}",
                    "model._target_=helpers.RaiseAfter", "hydra.sweeper.n_trials=5", "hydra.sweeper.max_failures=2"],
                   env, tmp_path, timeout=120)
    assert proc.returncode == 1
    assert "sweep stopped: 2 trials" in proc.stderr and "max_failures=2" in proc.stderr
    assert "injected fault" in proc.stderr
    assert len(trials_of(outputs)) == 2


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _popen(args: list[str], env: dict[str, str], cwd: Path, log: Path, script: Path = REPO / "run.py"
           ) -> subprocess.Popen:
    with log.open("w") as handle:
        return subprocess.Popen([sys.executable, str(script), *args], cwd=cwd, env=env, stdout=handle,
                                stderr=subprocess.STDOUT)


def start_until_first_run(args: list[str], env: dict[str, str], cwd: Path, outputs: Path,
                          script: Path = REPO / "run.py") -> subprocess.Popen:
    """Start a sweep in the background; return once its first run has written run.json (it is then training)."""
    log = cwd / "sweep.log"
    proc = _popen(args, env, cwd, log, script)
    try:
        _wait_for(lambda: (outputs / "output01" / "run.json").exists() or proc.poll() is not None, 120, "trial 0")
        assert proc.poll() is None, log.read_text()[-3000:]
    except BaseException:
        proc.kill()
        raise
    return proc


def test_a_killed_workers_trial_is_retried_by_another_worker(sweep_args: list[str], outputs: Path,
                                                             env: dict[str, str], tmp_path: Path) -> None:
    # Worker A runs long trials; it is SIGKILLed once its first run has started.
    a = start_until_first_run([*sweep_args, "hydra.sweeper.n_trials=2", "trainer.max_steps=100000",
                               "trainer.val_every=50000"], env, tmp_path, outputs)
    time.sleep(0.5)
    a.kill()
    a.wait()
    orphan = trials_of(outputs)[0]
    assert orphan.state == TrialState.RUNNING

    b = run_cli([*sweep_args, "hydra.sweeper.n_trials=2"], env, tmp_path, timeout=180)
    assert b.returncode == 0, b.stderr[-3000:]
    trials = trials_of(outputs)
    assert trials[0].state == TrialState.FAIL  # failed as stale after the grace period ...
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state in (TrialState.COMPLETE, TrialState.PRUNED)  # ... and re-run by B
    assert retry[0].params == orphan.params
    assert retry[0].user_attrs["run_number"] != 1  # a new run, and output01 says how A's run ended
    assert trials[0].user_attrs["fail_reason"].startswith("stale: no heartbeat within the grace period")
    record = json.loads((outputs / "output01" / "run.json").read_text())
    assert record["status"] == "failed" and "trial 0 stale: no heartbeat" in record["error"]
    finished = [t for t in trials if t.state != TrialState.FAIL]
    assert len(finished) == 2


@pytest.mark.parametrize("snapshot", [True, False])
def test_config_edits_during_a_sweep_do_not_reach_later_trials(snapshot: bool, outputs: Path, env: dict[str, str],
                                                               tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "run.py", project / "run.py")
    shutil.copytree(REPO / "conf", project / "conf", symlinks=False)
    args = [f"hparams_search={STUDY}", "debug=fast", "logger=none", f"paths.outputs={outputs}",
            "trainer.max_steps=150", "trainer.val_every=150", "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.snapshot={str(snapshot).lower()}"]
    proc = start_until_first_run(args, env, tmp_path, outputs, script=project / "run.py")
    try:
        assert not (outputs / "output02").exists(), "trial 0 ended before the edit; make it longer"
        trainer_yaml = project / "conf" / "trainer" / "default.yaml"
        trainer_yaml.write_text(trainer_yaml.read_text().replace("seed: 0", "seed: 123"))
        assert proc.wait(timeout=180) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        proc.kill()
    seeds = [yaml.safe_load((outputs / f"output0{i}" / "config_resolved.yaml").read_text())["trainer"]["seed"]
             for i in (1, 2)]
    assert seeds == ([0, 0] if snapshot else [0, 123])


def test_submitit_local_runs_each_trial_in_its_own_process(sweep_args: list[str], outputs: Path,
                                                           env: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli([*sweep_args, "hydra.sweeper.n_trials=2", "hydra/launcher=submitit_local"], env, tmp_path,
                   timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = trials_of(outputs)
    # COMPLETE or PRUNED is told by the job process itself; the sweeper alone would only mark it FAIL.
    assert [t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials] == [True, True]
    check_identity(trials, outputs)
    job_logs = list((outputs / "multirun" / "sweep01" / ".submitit").glob("*/*_log.out"))
    assert len(job_logs) == 2


# --- PostgreSQL: a real throwaway server --------------------------------------------------------------------------

def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL cluster on 127.0.0.1 with a password; its URL. `.ci/run` installs the server."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("AUDIOLAB_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) not found but AUDIOLAB_REQUIRE_POSTGRES is set")
        pytest.skip("PostgreSQL is not installed (.ci/run installs it)")
    import socket
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="audiolab-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    (root / "pw").write_text("s3cret-pw\n")
    if as_user:
        shutil.chown(root / "pw", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "audiolab", f"--pwfile={root / 'pw'}",
                    "--auth=scram-sha-256"], check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://audiolab:s3cret-pw@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_processes_share_one_postgresql_study(postgres_url: str, sweep_args: list[str], outputs: Path,
                                                  env: dict[str, str], tmp_path: Path) -> None:
    args = [*sweep_args, "hydra.sweeper.n_trials=6", f"hydra.sweeper.storage={postgres_url}"]
    # Two "machines" start together on a fresh database (the schema-creation race) and share the trials.
    procs = [_popen(args, env, tmp_path, tmp_path / f"machine{i}.log") for i in range(2)]
    codes = [p.wait(timeout=300) for p in procs]
    logs = [(tmp_path / f"machine{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n".join(log[-2000:] for log in logs)
    trials = trials_of(outputs, postgres_url)
    assert len(trials) == 6 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    check_identity(trials, outputs)
    assert all(log.count("audiolab: trial ") >= 2 for log in logs), "one process ran every trial"
    # The password is in the command line, but never in a log or a saved file.
    assert not any("s3cret-pw" in log for log in logs)
    leaked = [p for p in outputs.rglob("*") if p.is_file() and p.suffix in (".yaml", ".json", ".jsonl", ".log")
              and "s3cret-pw" in p.read_text(errors="replace")]
    assert not leaked, leaked


def test_an_unreachable_postgresql_is_a_clear_error_and_leaves_no_sweep_dir(sweep_args: list[str], outputs: Path,
                                                                              env: dict[str, str],
                                                                              tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on, once the socket is closed again
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://audiolab:n0t-this-pw@127.0.0.1:{port}/postgres"
    proc = run_cli([*sweep_args, f"hydra.sweeper.storage={url}"], env, tmp_path, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    expected = f"cannot open the study storage postgresql+psycopg://audiolab:***@127.0.0.1:{port}"
    assert f"audiolab: sweep storage error: {expected}" in output, output[-2000:]
    assert "Traceback" not in output and "n0t-this-pw" not in output
    assert not (outputs / "multirun").exists()


def test_interrupting_a_sweep_stops_it_and_keeps_the_budget(sweep_args: list[str], outputs: Path,
                                                            env: dict[str, str], tmp_path: Path) -> None:
    proc = start_until_first_run([*sweep_args, "hydra.sweeper.n_trials=3", "trainer.max_steps=100000",
                                  "trainer.val_every=50000"], env, tmp_path, outputs)
    try:
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert code == 128 + signal.SIGINT, (tmp_path / "sweep.log").read_text()[-3000:]
    trials = trials_of(outputs)
    assert len(trials) == 1 and trials[0].state == TrialState.FAIL and trials[0].user_attrs["interrupted"]
    assert run_json(trials[0])["status"] == "interrupted"


def test_multi_objective_preset_records_quality_and_size(outputs: Path, env: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli(["hparams_search=lr_depth_size", "debug=fast", "logger=none", f"paths.outputs={outputs}",
                    "hydra.sweeper.n_trials=3"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = trials_of(outputs, study="lr_depth_size")
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        record = run_json(t)
        assert t.values == [record["best_val_spec_loss"], record["parameters"]]
        assert not t.intermediate_values  # multi-objective trials are not pruned, so nothing is reported
