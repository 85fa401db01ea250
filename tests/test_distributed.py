"""One run on several processes: real torchrun launches with gloo on the CPU, compared with one process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from audiolab.runs.record import read_metrics
from audiolab.train.state import inference_weights
from conftest import REPO

STEPS = 8
# Two processes share the 2 cores: one thread each, so neither oversubscribes the other.
BASE = ["debug=fast", "logger=none", f"trainer.max_steps={STEPS}", "trainer.val_every=4", "trainer.log_every=1",
        "data.batch_size=4", "trainer.threads=1"]
SIGNAL_AT = "model._target_=helpers.SignalAt"  # a ConvNeXt U-Net that can signal its own rank
# Adam turns rounding-sized gradient differences into lr-sized steps; the default 1e-3 on this tiny model makes
# the grad norm swing 2 -> 20 and the curves part by 1e-4 within 8 steps on some CPUs. A smaller step keeps the
# comparison about the sharding, not about chaos.
CALM = "optim.lr=1e-4"


def torchrun(nproc: int, args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240
             ) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N run.py ARGS`, as a user would start it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "run.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_dirs(outputs: Path) -> list[Path]:
    return sorted(p for p in outputs.iterdir() if p.name.startswith("output"))


def curve(run_dir: Path) -> dict[tuple[int, str], float]:
    """Every logged value but the wall-clock ones, by (step, key)."""
    return {(row["step"], k): v for row in read_metrics(run_dir) for k, v in row.items()
            if k != "step" and not k.startswith("perf/")}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("dist-cache")
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                      "MASTER_"))}
    return keep | {"AUDIOLAB_CACHE": str(cache), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": str(REPO / "tests")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> dict[str, Path]:
    """One process; two processes; two processes signalled on rank 1 during step 3, then resumed."""
    work = tmp_path_factory.mktemp("dist")
    made = {}
    for name, nproc, extra in (("one", 1, [SIGNAL_AT, CALM]), ("two", 2, [SIGNAL_AT, CALM]),
                               ("two_signalled", 2, [SIGNAL_AT, CALM, "+model.signal_at=3"])):
        outputs = work / name
        proc = torchrun(nproc, [*BASE, f"paths.outputs={outputs}", *extra], env, work)
        made[name] = outputs
        if name == "two_signalled":
            # the ranks exit 128 + SIGTERM, which torchrun reports as a failure of its own
            assert proc.returncode != 0, proc.stderr[-3000:]
            assert json.loads((outputs / "output01" / "run.json").read_text())["status"] == "interrupted"
            resumed = torchrun(2, [f"resume={outputs / 'output01'}", "++model.signal_at=0"], env, work)
            assert resumed.returncode == 0, resumed.stderr[-3000:]
        else:
            assert proc.returncode == 0, proc.stderr[-3000:]
    return made


def test_two_processes_make_one_numbered_run_written_by_rank_0(runs: dict[str, Path]) -> None:
    (run,) = run_dirs(runs["two"])
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["world_size"] == 2 and record["step"] == STEPS
    assert (run / "train.log").is_file() and (run / "train.rank1.log").is_file()
    assert "rank 1 of 2" in (run / "train.rank1.log").read_text()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert len(read_metrics(run)) == len({row["step"] for row in read_metrics(run)}) + 2  # 2 validation lines


def test_two_processes_follow_the_loss_curve_of_one(runs: dict[str, Path]) -> None:
    (one,), (two,) = run_dirs(runs["one"]), run_dirs(runs["two"])
    a, b = curve(one), curve(two)
    assert a.keys() == b.keys()
    for key in a:
        # Float rounding differs from step 1 (the shares' gradients are summed in another order, the spectral
        # convergence from per-rank sums) and Adam amplifies it over steps. Measured over these 8 steps on a
        # Xeon (relative): loss 7.6e-6, val/spec_loss 6.4e-7, grad norm 7.1e-5 at step 1 and 1.0e-3 at step 8.
        # A wrong share or a summed instead of averaged gradient moves them by percents at step 1.
        name = key[1].split("_k")[0].removesuffix("_low").removesuffix("_mid").removesuffix("_high")  # the groups
        rtol = {"train/grad_norm": 5e-4 if key[0] == 1 else 1e-2, "val/spec_loss": 5e-5}.get(name, 2e-5)
        # val/improvement = 1 - ratio is near 0 in a short run: its difference is bounded absolutely
        atol = 5e-5 if name == "val/improvement" else 0.0
        assert b[key] == pytest.approx(a[key], rel=rtol, abs=atol), key
    # and the ranks' validation, sharded and reduced, is the one-process figure at the same weights
    assert b[(STEPS, "val/spec_loss_input")] == a[(STEPS, "val/spec_loss_input")]


def test_a_signal_on_one_rank_stops_both_at_one_step_and_resume_is_bitwise(runs: dict[str, Path]) -> None:
    (full,), (cut,) = run_dirs(runs["two"]), run_dirs(runs["two_signalled"])
    record = json.loads((cut / "run.json").read_text())
    assert record["status"] == "completed" and len(record["resumes"]) == 1
    rank1 = (cut / "train.rank1.log").read_text()
    assert "received SIGTERM" in rank1 and "received SIGTERM" not in (cut / "train.log").read_text().split(
        "resuming")[0]
    assert curve(cut) == curve(full)  # bitwise
    for name in ("last.pt", "best.pt"):
        w_full = inference_weights(torch.load(full / "checkpoints" / name, weights_only=False))
        w_cut = inference_weights(torch.load(cut / "checkpoints" / name, weights_only=False))
        assert all(torch.equal(w_full[k], w_cut[k]) for k in w_full)


def test_sharded_validation_equals_one_process(tmp_path: Path, env: dict[str, str]) -> None:
    """The same weights scored by two ranks give bitwise the figures of one process (an uneven split too)."""
    script = tmp_path / "validate.py"
    script.write_text(VALIDATE_SCRIPT)
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one.json")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(tmp_path / "two.json")], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert a["n_batches"] == 3 and a["metrics"] == b["metrics"]
    assert np.array_equal(np.asarray(a["outputs"]), np.asarray(b["outputs"]))


VALIDATE_SCRIPT = '''
import json, os, sys
import torch
from hydra import compose, initialize_config_dir
from audiolab.common.distributed import end_process, init_world
from audiolab.config import register_configs
from audiolab.train.trainer import build_training


def main() -> None:
    register_configs()
    world = init_world(60)
    with initialize_config_dir(config_dir=os.path.abspath("conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["debug=fast", "logger=none", "data.val_max_crops=5",
                                                       "data.batch_size=2", "trainer.threads=1"])
    training = build_training(cfg)
    with torch.no_grad():  # weights that are not the identity, the same on every rank
        for p in training.state.model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    metrics, outputs = training.validator.run(training.state.model, None, world)
    if world.is_main:
        n_batches = -(-len(training.validator.inputs) // training.validator.batch_size)
        with open(sys.argv[1], "w") as out:  # closed here: os._exit would not flush it
            json.dump({"metrics": metrics, "outputs": outputs[:, 0, ::64].tolist(), "n_batches": n_batches}, out)


# like run.py: leave without the interpreter's teardown, where gloo's threads can abort the process
end_process(main)
'''


def start_long_run(outputs: Path, env: dict[str, str], cwd: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    """A 2-process run that trains until stopped; return it once it logs steps, with rank 1's pid."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "run.py"), *BASE, "trainer.max_steps=100000", "trainer.val_every=100000",
           f"paths.outputs={outputs}", *extra]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = outputs / "output01" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.stat().st_size > 0):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the run did not start training: {proc.communicate()[0][-3000:]}")
        time.sleep(0.2)
    found = re.search(r"rank 1 of 2 \(pid (\d+)", (outputs / "output01" / "train.rank1.log").read_text())
    assert found, "rank 1 did not log its pid"
    return proc, int(found.group(1))


def test_a_killed_rank_ends_the_run_with_a_clear_error(tmp_path: Path, env: dict[str, str]) -> None:
    outputs = tmp_path / "outputs"
    proc, rank1 = start_long_run(outputs, env, tmp_path)
    try:
        os.kill(rank1, signal.SIGKILL)
        killed_at = time.monotonic()
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert time.monotonic() - killed_at < 60, "the surviving rank did not end in bounded time"
    record = json.loads((outputs / "output01" / "run.json").read_text())
    assert record["status"] == "failed", out[-3000:]
    assert "lost contact with another rank" in record["error"]
    assert "rank      : 1" in out and "SIGKILL" in out  # torchrun names the rank that died


def test_a_stuck_rank_times_out_instead_of_hanging(tmp_path: Path, env: dict[str, str]) -> None:
    """A rank that stops answering (SIGSTOP) is not dead to torchrun: the collective's timeout must end the run."""
    outputs = tmp_path / "outputs"
    proc, rank1 = start_long_run(outputs, env, tmp_path, "trainer.dist_timeout_s=5")
    try:
        os.kill(rank1, signal.SIGSTOP)
        stopped_at = time.monotonic()
        out, _ = proc.communicate(timeout=90)
    finally:
        try:
            os.kill(rank1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert time.monotonic() - stopped_at < 60
    record = json.loads((outputs / "output01" / "run.json").read_text())
    assert record["status"] == "failed" and "lost contact with another rank" in record["error"], out[-3000:]


@pytest.mark.parametrize("recipe", [
    ["optim=muon", "trainer.ema_decay=0.9"],
    ["optim=psgd"],
    ["experiment=rave_v2_small", "recipe.phase1_steps=2", "trainer.max_steps=4", "trainer.val_every=2"],
], ids=["muon_ema", "psgd", "vae_gan"])
def test_every_recipe_trains_with_the_ranks_in_step(recipe: list[str], tmp_path: Path, env: dict[str, str]) -> None:
    """Muon with EMA, PSGD and the two-phase GAN: each validation checks that the ranks' weights agree."""
    outputs = tmp_path / "outputs"
    proc = torchrun(2, [*BASE, *recipe, f"paths.outputs={outputs}"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = run_dirs(outputs)
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["world_size"] == 2
    vals = [row for row in read_metrics(run) if "val/spec_loss" in row]
    assert len(vals) >= 2 and all(np.isfinite(row["val/spec_loss"]) for row in vals)
    if "experiment=rave_v2_small" in recipe:
        phases = {row["train/phase"] for row in read_metrics(run) if "train/phase" in row}
        assert phases == {1.0, 2.0}


def test_a_submitit_job_of_two_tasks_is_one_run_on_two_processes(tmp_path: Path, env: dict[str, str]) -> None:
    """`hydra/launcher=submitit_local` with tasks_per_node=2 (as submitit_slurm on a cluster): one numbered run."""
    outputs = tmp_path / "outputs"
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), "-m", "hydra/launcher=submitit_local",
                           "hydra.launcher.tasks_per_node=2", *BASE, f"paths.outputs={outputs}"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(outputs)
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["world_size"] == 2 and record["step"] == STEPS
    assert "rank 1 of 2" in (run / "train.rank1.log").read_text()


END_SCRIPT = '''
import logging, sys
from audiolab.common.distributed import World, end_process, init_world

def main():
    world = init_world(30)
    logging.basicConfig(filename=f"{sys.argv[1]}/rank{world.rank}.log", level=logging.INFO)
    logging.getLogger("t").info("written before the exit")
    print(f"rank {world.rank} says bye", end="")
    sys.exit(3 + world.rank)

end_process(main)
'''


def test_a_torchrun_rank_ends_with_its_status_and_flushed_records(tmp_path: Path, env: dict[str, str]) -> None:
    """end_process skips the interpreter's teardown (where gloo can abort) but keeps the status, output and logs."""
    script = tmp_path / "end.py"
    script.write_text(END_SCRIPT)
    env = {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"}  # buffered, as most users run
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "--redirects=3", f"--log-dir={tmp_path / 'logs'}", str(script), str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert "exitcode  : 3" in proc.stderr or "exitcode  : 4" in proc.stderr, proc.stderr[-3000:]
    said = [p.read_text() for p in sorted((tmp_path / "logs").rglob("stdout.log"))]
    assert said == ["rank 0 says bye", "rank 1 says bye"]
    for rank in (0, 1):
        assert "written before the exit" in (tmp_path / f"rank{rank}.log").read_text()
    # outside torchrun it is a plain SystemExit with the same status
    plain = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=60)
    assert plain.returncode == 3 and plain.stdout == "rank 0 says bye"
