#!/usr/bin/env python
"""Training speed of audiolab's models on a GPU: eager fp32, bf16, bf16 + torch.compile; packed trials; DDP.

One prepared script for the rare occasions a GPU is at hand (it has to be right the first time), with a
`--cpu-smoke` mode that runs the same code paths at tiny sizes on the CPU in well under a minute
(tests/test_bench_gpu.py runs it, so the script cannot rot).

Every row is a real training, built the way `python run.py` builds one: the config is composed with Hydra's
compose API from conf/ (`config`, with `logger=none`, the model, batch and segment as overrides), checked by
`validate_config`, and built by `audiolab.train.trainer.build_training`; batches come from
`audiolab.train.batches.training_batches` as in `audiolab.train.trainer.train`, and each step is
`recipe.step(state, batch)` then `state.end_step()`, as in `audiolab.train.loop.fit` (no validation, no
hooks). Every row also sets `data.val_max_crops=2 trainer.sample_clips=0` (only the validator's set-up uses them).

Tables (GPU sizes; `--cpu-smoke` uses `debug=fast`'s tiny models at batch 2 x 4096, rave_v2_small, and in
phase 2 recipe.d_every=2 with discriminator.model.capacity=4; 1 warm-up and 2 timed steps a row):

    convnext1d_big       model=convnext1d_big at 32 x 48640
    convnext1d           model=convnext1d at conf/data/synth.yaml's default 8 x 16384 (as `make train` runs it)
    rave_v2 phase 1      experiment=rave_v2 (PQMF VAE) at 8 x 131072, recipe.phase1_steps=1000000000
    rave_v2 phase 2      experiment=rave_v2 at 8 x 131072, recipe.phase1_steps=0: frozen encoder + discriminator;
                         1 step in recipe.d_every (4) is a discriminator step, so phase-2 figures average whole
                         d_every cycles (timed steps are rounded up to a multiple of d_every and warm-up covers
                         at least one full cycle plus one step, so both paths are compiled before timing)
    convnext2d_spec_big  model=convnext2d_spec_big at 32 x 48640

Rows: eager fp32 (trainer.precision=fp32 trainer.compile=false), bf16 (trainer.precision=bf16
trainer.compile=false), bf16 + compile (trainer.precision=bf16 trainer.compile=true, trainer.compile_backend
inductor; aot_eager in --cpu-smoke). The script only sets these overrides: what they do is build_training's.

Columns:
    steps/s      timed steps / the wall time of those steps (CUDA synchronised before each clock reading)
    audio s/s    steps/s x batch x segment / sample rate
    peak GiB     CUDA: torch.cuda.max_memory_allocated, reset (torch.cuda.reset_peak_memory_stats) before the
                 row's training is built, so it covers weights, optimizer state and the steps. CPU: the process's
                 peak resident set (audiolab.train.device.peak_memory_gib), which never goes down: a row shows
                 the largest of itself and every row before it
    data wait    time blocked in next(batches) / total wall time of the timed steps (both summed over the timed
                 steps). next() includes the crop, the host-to-device copy and the launch of augmentation and
                 degradation; device-side work that runs asynchronously is counted in the step, not the wait
    compile s    compiled rows only: wall time of the compiled row's warm-up steps minus that of the same
                 model's bf16 (eager) row's warm-up steps (same number of steps, same precision); when the bf16
                 row failed, the compiled row's first-step time instead (marked "first step"). The JSON has
                 every row's warmup_s and first_step_s

Goals (printed with PASS or MISS, never asserted): bf16 + compile steps/s / eager fp32 steps/s for
convnext1d_big >= 2x; data-wait fraction <= 2 % (convnext1d_big's bf16 + compile row; the worst row is printed
too); packed trials: total throughput of K=4 / K=1 >= 3x.

Packed trials: K = 1, 2, 4, 8 (--cpu-smoke: 1, 2) copies of the convnext1d training (8 x 16384,
trainer.precision=auto: bf16 on CUDA, fp32 on CPU; no compile), each a subprocess of this script
(`--packed-worker`), started together: each builds and warms up, says it is ready, and waits for a start file;
the parent writes it when all K are ready. Each then times its own steps and prints one JSON line, and goes on
training (untimed) until every trial has finished its timed steps, so the trials share the device for the whole
of every trial's timed window. On CUDA each sets torch.cuda.set_per_process_memory_fraction(1/K). Every trial
gets OMP_NUM_THREADS = max(1, cores // K), where cores is this process's OMP_NUM_THREADS when set (so a smoke
run under OMP_NUM_THREADS=1 stays at one thread a trial), else os.cpu_count().

DDP scaling (only with more than one CUDA device; never in --cpu-smoke): `python -m torch.distributed.run
--standalone --nproc_per_node=G run.py model=convnext1d_big` for G = 1 and G = all devices, 32 x 48640 per
device (data.batch_size = 32 G is the global batch), bf16, no compile; the figure is the last
`perf/audio_s_per_s` in the run's metrics.jsonl (trainer.log_every is half the run, so that last window leaves
out the first half, warm-up included).

    python benchmarks/bench_gpu.py --json bench_gpu.json               # everything, on CUDA when present
    python benchmarks/bench_gpu.py --only convnext1d_big,packed        # comma-separated name substrings
    python benchmarks/bench_gpu.py --cpu-smoke                         # tiny, on the CPU, well under a minute

`--only` matches the table names above, `packed convnext1d` and `ddp convnext1d_big`. A row that fails (out of
memory, a compile error) prints its error and the others go on. The JSON (--json) is rewritten after every row
and section, so a run stopped by a time limit keeps what it measured. Time on one GPU, roughly: each compiled
row spends most of a minute compiling with inductor (the phase-2 VAE longer: two graphs), each packed round
about half a minute; with a 10-minute cap per command, split the run, e.g. `--only convnext1d,packed` and then
`--only rave,spec`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODES = [  # (name, overrides); the compile backend is added per run (inductor, aot_eager in --cpu-smoke)
    ("eager fp32", ["trainer.precision=fp32", "trainer.compile=false"]),
    ("bf16", ["trainer.precision=bf16", "trainer.compile=false"]),
    ("bf16 + compile", ["trainer.precision=bf16", "trainer.compile=true"]),
]
COMPILED, EAGER_REF = "bf16 + compile", "bf16"
PHASE1_FOREVER = 10**9
try:  # audiolab/train/device.py caps a process's share of its GPU by this variable (the sweeper's packed trials)
    from audiolab.train.device import MEMORY_FRACTION_ENV
except ImportError:
    MEMORY_FRACTION_ENV = "AUDIOLAB_CUDA_MEMORY_FRACTION"
# name -> (GPU overrides, smoke overrides, whether steps come in recipe.d_every cycles); sizes are in the overrides.
TABLES: dict[str, tuple[list[str], list[str], bool]] = {
    "convnext1d_big": (["model=convnext1d_big", "data.batch_size=32", "data.segment=48640"],
                       ["model=convnext1d_big"], False),
    "convnext1d": (["model=convnext1d"], ["model=convnext1d"], False),
    "rave_v2 phase 1": (["experiment=rave_v2", "data.batch_size=8", "data.segment=131072",
                         f"recipe.phase1_steps={PHASE1_FOREVER}"],
                        ["experiment=rave_v2_small", f"recipe.phase1_steps={PHASE1_FOREVER}"], False),
    "rave_v2 phase 2": (["experiment=rave_v2", "data.batch_size=8", "data.segment=131072", "recipe.phase1_steps=0"],
                        ["experiment=rave_v2_small", "recipe.phase1_steps=0", "recipe.d_every=2",
                         "discriminator.model.capacity=4"], True),
    "convnext2d_spec_big": (["model=convnext2d_spec_big", "data.batch_size=32", "data.segment=48640"],
                            ["model=convnext2d_spec_big"], False),
}
# debug=fast: tiny models, batch 2 x 4096; a small synthetic dataset (a separate cache, generated in about 1 s).
SMOKE = ["debug=fast", "data.batch_size=2", "data.segment=4096", "data.train_seconds=20", "data.val_seconds=10"]
COMMON = ["logger=none", "data.val_max_crops=2", "trainer.sample_clips=0", "trainer.progress=false"]
PACKED_NAME, PACKED_MODEL = "packed convnext1d", ["model=convnext1d", "trainer.precision=auto", "trainer.compile=false"]
DDP_NAME = "ddp convnext1d_big"
GOALS = {"speedup": 2.0, "data_wait": 0.02, "packed_k4": 3.0}


# --- one training, measured ------------------------------------------------------------------------------

def compose_config(overrides: list[str]):
    """The config `python run.py <overrides>` would get, without the hydra node (as tests/conftest.py does)."""
    from hydra import compose, initialize_config_dir

    from audiolab.config import register_configs, validate_config
    from audiolab.config.resolvers import register_resolvers

    if not getattr(compose_config, "registered", False):
        register_configs()
        register_resolvers()
        compose_config.registered = True
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    validate_config(cfg)
    return cfg


def synchronize(device) -> None:
    """Wait for the device, so that the clock reads finished work."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(training, batches, n: int) -> dict[str, Any]:
    """n training steps as the loop takes them; wall time per step and time blocked in next(batches)."""
    from time import perf_counter

    wait = wall = 0.0
    first = None
    for _ in range(n):
        start = perf_counter()
        batch = next(batches)
        got = perf_counter()
        training.recipe.step(training.state, batch)
        training.state.end_step()
        synchronize(training.device)
        took = perf_counter() - start
        wait, wall = wait + got - start, wall + took
        first = took if first is None else first
    return {"steps": n, "wall_s": wall, "wait_s": wait, "first_step_s": first}


def free_memory() -> None:
    """Collect garbage, drop compiled graphs, and give cached CUDA memory back, between rows."""
    import torch

    gc.collect()
    if "torch._dynamo" in sys.modules:  # something compiled: drop its graphs (and what they hold)
        try:
            sys.modules["torch._dynamo"].reset()
        except Exception:  # noqa: BLE001 - a benchmark goes on
            pass
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Measured:
    """A built training with its batches; closes both (and frees CUDA memory) on exit."""

    def __init__(self, overrides: list[str]) -> None:
        self.overrides = overrides
        self.training = self.batches = None

    def __enter__(self) -> Measured:
        import torch

        from audiolab.train.batches import training_batches
        from audiolab.train.trainer import build_training

        cfg = compose_config(self.overrides)
        device = torch.device(str(cfg.trainer.device)) if str(cfg.trainer.device) != "auto" else None
        if device is not None and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.training = build_training(cfg)
        t = self.training
        self.batches = training_batches(t.data, t.task, t.augment, t.device, int(cfg.trainer.seed), t.state.step,
                                        False)
        return self

    def __exit__(self, *exc) -> None:
        if self.batches is not None:
            self.batches.close()
        self.training = self.batches = None
        free_memory()

    def figures(self, warm: dict[str, Any], timed: dict[str, Any]) -> dict[str, Any]:
        """Throughput, memory and data wait of the timed steps."""
        from audiolab.train.device import peak_memory_gib

        t = self.training
        steps_per_s = timed["steps"] / timed["wall_s"]
        return {"steps_per_s": steps_per_s, "audio_s_per_s": steps_per_s * t.audio_seconds_per_step,
                "step_s": timed["wall_s"] / timed["steps"], "peak_mem_gib": peak_memory_gib(t.device),
                "data_wait_fraction": timed["wait_s"] / timed["wall_s"], "timed_steps": timed["steps"],
                "warmup_steps": warm["steps"], "warmup_s": warm["wall_s"], "first_step_s": warm["first_step_s"],
                "batch": t.data.batch_size, "segment": t.data.segment, "sample_rate": t.data.sample_rate,
                "device": str(t.device), "amp": str(t.amp) if t.amp else None,
                "parameters": t.n_parameters, "compiled": bool(getattr(getattr(t.state, "forward", None), "compile",
                                                                        False)), "error": None}


def steps_for(cycle: int | None, warmup: int, steps: int) -> tuple[int, int]:
    """Warm-up and timed steps; with a d_every cycle, warm-up >= one cycle + 1 and timed steps whole cycles."""
    if not cycle:
        return warmup, steps
    return max(warmup, cycle + 1), cycle * math.ceil(steps / cycle)


def error_text(err: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}"[:300]


def measure_row(overrides: list[str], warmup: int, steps: int, cycle: bool) -> dict[str, Any]:
    """One table row; an exception becomes the row's `error`."""
    try:
        with Measured(overrides) as m:
            d_every = int(m.training.cfg.recipe.d_every) if cycle else None
            n_warm, n_timed = steps_for(d_every, warmup, steps)
            warm = run_steps(m.training, m.batches, n_warm)
            timed = run_steps(m.training, m.batches, n_timed)
            return m.figures(warm, timed)
    except Exception as err:  # noqa: BLE001 - OOM, a compile error, ...: print it in the row and go on
        traceback.print_exc(file=sys.stderr)
        failed = {"error": error_text(err)}
    free_memory()  # again, now that the traceback (which holds the failed row's tensors) is gone
    return failed


# --- packed trials -----------------------------------------------------------------------------------------

def wait_for(path: Path, seconds: float, parent: int, poll: float) -> None:
    """Block until `path` exists; give up after `seconds` or when the parent process is gone."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline or os.getppid() != parent:
            raise TimeoutError(f"no {path.name} file after {seconds:.0f} s (or the benchmark is gone)")
        time.sleep(poll)


def packed_worker(settings: dict[str, Any]) -> int:
    """One of K trials: import, wait for `build`, build and warm up, say ready, wait for `start`, time, print one
    JSON line, then train on (untimed) until `stop`."""
    import torch
    import torch._dynamo  # noqa: F401 - torch.optim imports it on the first optimizer anyway: do it while idle

    import audiolab.train.batches  # noqa: F401
    import audiolab.train.trainer  # noqa: F401

    folder = Path(settings["folder"])
    index, k = settings["index"], settings["k"]
    parent = os.getppid()
    try:
        wait_for(folder / "build", settings["idle_s"], parent, 0.02)  # the rounds before this one run meanwhile
        if settings["cuda"]:  # (pick_device also applies AUDIOLAB_CUDA_MEMORY_FRACTION, set to the same 1/K)
            torch.cuda.set_per_process_memory_fraction(1 / k, torch.device(settings["device"]))
        with Measured(settings["overrides"]) as m:
            warm = run_steps(m.training, m.batches, settings["warmup"])
            (folder / f"ready{index}").touch()
            wait_for(folder / "start", settings["wait_s"], parent, 0.002)
            timed = run_steps(m.training, m.batches, settings["steps"])
            print(json.dumps({"packed_worker": index, "k": k, **m.figures(warm, timed)}), flush=True)
            (folder / f"done{index}").touch()
            deadline = time.monotonic() + settings["wait_s"]
            while not (folder / "stop").exists() and time.monotonic() < deadline and os.getppid() == parent:
                run_steps(m.training, m.batches, 1)  # keep the device shared until every trial is timed
    except Exception as err:  # noqa: BLE001 - reported to the parent as this trial's error
        traceback.print_exc(file=sys.stderr)
        print(json.dumps({"packed_worker": index, "k": k, "error": error_text(err)}), flush=True)
        (folder / f"done{index}").touch()
        return 1
    return 0


def thread_budget() -> int:
    """CPU threads the packed trials share: this process's OMP_NUM_THREADS when set, else every core."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return os.cpu_count() or 1


class PackedRounds:
    """Every round's trial processes, started at once so their imports overlap; each round builds when told."""

    def __init__(self, root: Path, ks: list[int], overrides: list[str], device, warmup: int, steps: int,
                 timeout: float) -> None:
        self.root, self.ks, self.timeout = root, ks, timeout
        self.procs: dict[int, list[subprocess.Popen]] = {}
        for k in ks:
            folder = root / f"k{k}"
            folder.mkdir()
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, thread_budget() // k)), "PYTHONUNBUFFERED": "1",
                   "WANDB_MODE": "disabled", MEMORY_FRACTION_ENV: f"{1 / k:.6g}"}
            if device.type != "cuda":
                env.pop(MEMORY_FRACTION_ENV)
            self.procs[k] = []
            for i in range(k):
                settings = {"folder": str(folder), "index": i, "k": k, "cuda": device.type == "cuda",
                            "device": str(device), "overrides": overrides,
                            "warmup": warmup, "steps": steps, "wait_s": timeout,
                            "idle_s": 3600 + timeout * len(ks)}
                with open(folder / f"out{i}", "w") as out, open(folder / f"err{i}", "w") as err:
                    self.procs[k].append(subprocess.Popen(
                        [sys.executable, str(Path(__file__).resolve()), "--packed-worker", json.dumps(settings)],
                        cwd=REPO, env=env, stdout=out, stderr=err))

    def close(self) -> None:
        """Kill whatever trial is still running (this object started them all)."""
        for procs in self.procs.values():
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()

    def run(self, k: int) -> dict[str, Any]:
        """Round K: build, start together, collect each trial's line; per-trial and total throughput."""
        folder, procs = self.root / f"k{k}", self.procs[k]
        result: dict[str, Any] = {"k": k, "omp_threads": max(1, thread_budget() // k), "trials": [], "error": None}
        (folder / "build").touch()
        started = time.monotonic()
        try:
            for stage, then in (("ready", "start"), ("done", "stop")):
                while not all((folder / f"{stage}{i}").exists() for i in range(k)):
                    if any(p.poll() is not None and not (folder / f"{stage}{i}").exists()
                           for i, p in enumerate(procs)):
                        raise RuntimeError(f"a trial exited before it was {stage}")
                    if time.monotonic() - started > self.timeout:
                        raise TimeoutError(f"trials not {stage} after {self.timeout:.0f} s")
                    time.sleep(0.005)
                (folder / then).touch()
            for p in procs:
                p.wait(timeout=max(10.0, self.timeout - (time.monotonic() - started)))
        except Exception as err:  # noqa: BLE001
            result["error"] = error_text(err)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for i in range(k):
            lines = [line for line in (folder / f"out{i}").read_text().splitlines() if line.startswith("{")]
            trial = json.loads(lines[-1]) if lines else {"packed_worker": i, "error": "no result line"}
            if trial.get("error"):
                trial["stderr_tail"] = (folder / f"err{i}").read_text().strip().splitlines()[-3:]
                result["error"] = result["error"] or f"trial {i}: {trial['error']}"
            result["trials"].append(trial)
        good = [t for t in result["trials"] if not t.get("error")]
        if len(good) == k:
            result["total_steps_per_s"] = sum(t["steps_per_s"] for t in good)
            result["total_audio_s_per_s"] = sum(t["audio_s_per_s"] for t in good)
            result["per_trial_steps_per_s"] = result["total_steps_per_s"] / k
        return result


# --- DDP scaling -------------------------------------------------------------------------------------------

def ddp_run(g: int, steps: int, timeout: float) -> dict[str, Any]:
    """run.py under torchrun on G devices; the last perf/* figures of its metrics.jsonl."""
    n = max(20, 2 * steps)
    with tempfile.TemporaryDirectory(prefix=f"ddp{g}-") as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={g}",
               str(REPO / "run.py"), "model=convnext1d_big", f"data.batch_size={32 * g}", "data.segment=48640",
               f"trainer.max_steps={n}", f"trainer.val_every={n}", f"trainer.log_every={n // 2}", "logger=none",
               "trainer.precision=bf16", "trainer.compile=false", "data.val_max_crops=2", "trainer.sample_clips=0",
               "trainer.progress=false", f"paths.outputs={tmp}"]
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "WANDB_MODE": "disabled"})
        except subprocess.TimeoutExpired:
            return {"gpus": g, "error": f"timed out after {timeout:.0f} s"}
        runs = sorted(Path(tmp).glob("output[0-9]*"))
        if proc.returncode or len(runs) != 1:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"gpus": g, "error": f"exit {proc.returncode}, {len(runs)} run dirs: {tail}"}
        perf = [m for m in map(json.loads, (runs[0] / "metrics.jsonl").read_text().splitlines())
                if "perf/audio_s_per_s" in m]
        if not perf:
            return {"gpus": g, "error": "no perf/audio_s_per_s in metrics.jsonl"}
        last = perf[-1]
        return {"gpus": g, "global_batch": 32 * g, "steps": n, "error": None, "step": last.get("step"),
                "audio_s_per_s": last["perf/audio_s_per_s"], "steps_per_s": last.get("perf/steps_per_s"),
                "peak_mem_gib": last.get("perf/peak_mem_gib")}


# --- report ------------------------------------------------------------------------------------------------

def header_facts(device) -> dict[str, Any]:
    """torch, device, CUDA, CPUs and the git commit."""
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001 - no git, not a checkout
        commit = None
    facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
             "device": str(device), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
             "git_commit": commit, "python": sys.version.split()[0],
             "memory_fraction_env": os.environ.get(MEMORY_FRACTION_ENV)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts |= {"device_name": torch.cuda.get_device_name(device), "device_memory_gib": props.total_memory / 2**30,
                  "device_count": torch.cuda.device_count(), "bf16_supported": torch.cuda.is_bf16_supported(),
                  "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    else:
        facts["device_name"] = f"CPU ({os.cpu_count()} cores)"
    return facts


def finite(obj: Any) -> Any:
    """The same structure with NaN and infinities as None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def fmt(value: float | None, spec: str) -> str:
    """A number, or a dash."""
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def verdict(value: float | None, goal: float, higher: bool) -> str:
    """PASS, MISS or n/a."""
    if value is None:
        return "n/a"
    return "PASS" if (value >= goal if higher else value <= goal) else "MISS"


class Report:
    """Prints tables as rows finish and keeps every figure for --json."""

    def __init__(self, json_path: Path | None) -> None:
        from rich.console import Console

        self.console = Console(width=150, highlight=False, soft_wrap=False)
        self.json_path = json_path
        self.data: dict[str, Any] = {"tables": [], "packed": None, "ddp": None, "goals": []}

    def save(self) -> None:
        """Rewrite the JSON file (NaN and inf as null)."""
        if self.json_path:
            self.json_path.write_text(json.dumps(finite(self.data), indent=2, default=str))

    def line(self, text: str) -> None:
        """A plain line, flushed (a run stopped by a time limit keeps its output)."""
        self.console.print(text, markup=False)
        sys.stdout.flush()

    def model_table(self, table: dict[str, Any]) -> None:
        """One model's rows."""
        from rich import box
        from rich.table import Table

        rows = [r for r in table["rows"] if not r.get("error")]
        n = rows[0]["parameters"] if rows else 0
        sizes = (f"{rows[0]['batch']} x {rows[0]['segment']}, "
                 + (f"{n / 1e6:.2f} M" if n >= 100_000 else f"{n:,}") + " parameters") if rows else "no row ran"
        t = Table(title=f"{table['model']}  ({sizes}; {' '.join(table['overrides'])})", box=box.SIMPLE_HEAD,
                  title_justify="left")
        for col in ("mode", "steps/s", "audio s/s", "peak GiB", "data wait", "compile s", "note"):
            t.add_column(col, justify="left" if col in ("mode", "note") else "right")
        for r in table["rows"]:
            if r.get("error"):
                t.add_row(r["mode"], "-", "-", "-", "-", "-", f"failed: {r['error']}")
                continue
            note = f"{r['timed_steps']} timed after {r['warmup_steps']} warm-up, {r['step_s'] * 1e3:.1f} ms/step"
            if r.get("compile_basis") == "first step":
                note += "; compile s = first step"
            if r["mode"] == COMPILED and not r.get("compiled"):
                note += "; NOT compiled: build_training ignored trainer.compile"
            t.add_row(r["mode"], fmt(r["steps_per_s"], ".3f"), fmt(r["audio_s_per_s"], ".1f"),
                      fmt(r["peak_mem_gib"], ".2f"), f"{100 * r['data_wait_fraction']:.2f} %",
                      fmt(r.get("compile_s"), ".1f"), note)
        self.console.print(t)
        sys.stdout.flush()


def compile_seconds(rows: dict[str, dict[str, Any]]) -> None:
    """compile_s of the compiled row: its warm-up minus the bf16 row's, or its first step when that row failed."""
    c, ref = rows.get(COMPILED), rows.get(EAGER_REF)
    if not c or c.get("error"):
        return
    if ref and not ref.get("error") and ref["warmup_steps"] == c["warmup_steps"]:
        c["compile_s"], c["compile_basis"] = c["warmup_s"] - ref["warmup_s"], "warm-up minus bf16 warm-up"
    else:
        c["compile_s"], c["compile_basis"] = c["first_step_s"], "first step"


def selected(name: str, only: list[str] | None) -> bool:
    """--only: any of the substrings in the name."""
    return not only or any(s in name for s in only)


def goals(report: Report, smoke: bool) -> None:
    """The project's goals, PASS or MISS beside each."""
    tables = {t["model"]: {r["mode"]: r for r in t["rows"]} for t in report.data["tables"]}
    big = tables.get("convnext1d_big", {})
    ok = {m: r for m, r in big.items() if not r.get("error")}
    speedup = ok[COMPILED]["steps_per_s"] / ok["eager fp32"]["steps_per_s"] if {COMPILED, "eager fp32"} <= set(ok) \
        else None
    wait = ok[COMPILED]["data_wait_fraction"] if COMPILED in ok else None
    all_rows = [(f"{name} / {mode}", r["data_wait_fraction"]) for name, rows in tables.items()
                for mode, r in rows.items() if not r.get("error")]
    worst = max(all_rows, key=lambda x: x[1]) if all_rows else None
    packed = {r["k"]: r for r in (report.data["packed"] or {}).get("rounds", [])}
    k4 = (packed[4]["total_audio_s_per_s"] / packed[1]["total_audio_s_per_s"]
          if 1 in packed and 4 in packed and "total_audio_s_per_s" in packed[4] and "total_audio_s_per_s" in packed[1]
          else None)
    k4_missing = "n/a (K=4 not run)" if 4 not in packed else "n/a (K=1 or K=4 failed)"
    items = [
        ("convnext1d_big: bf16 + compile / eager fp32 steps/s", speedup, ">= 2x",
         verdict(speedup, GOALS["speedup"], True), "n/a" if speedup is None else f"{speedup:.2f}x"),
        ("convnext1d_big bf16 + compile: data-wait fraction", wait, "<= 2 %", verdict(wait, GOALS["data_wait"], False),
         "n/a" if wait is None else f"{100 * wait:.2f} %"),
        ("packed convnext1d: total throughput K=4 / K=1", k4, ">= 3x", verdict(k4, GOALS["packed_k4"], True),
         fmt(k4, ".2f") + "x" if k4 is not None else k4_missing),
    ]
    report.line("")
    report.line("Goals" + ("  (--cpu-smoke: tiny models on the CPU; these verdicts say nothing about a GPU)"
                           if smoke else ""))
    for what, value, goal, mark, shown in items:
        report.line(f"  {what:<55} {shown:>24}   goal {goal:<7} {mark}")
        report.data["goals"].append({"goal": what, "value": value, "target": goal, "verdict": mark})
    if worst:
        report.line(f"  {'worst data-wait fraction of any row':<55} {f'{100 * worst[1]:.2f} %':>24}   ({worst[0]})")
        report.data["worst_data_wait"] = {"row": worst[0], "fraction": worst[1]}
    report.save()


def measure_tables(report: Report, base: list[str], smoke: bool, warmup: int, steps: int,
                   only: list[str] | None) -> None:
    """Every selected model's three rows, each printed as it finishes, then the model's table."""
    backend = "aot_eager" if smoke else "inductor"
    for name, (gpu_overrides, smoke_overrides, cycle) in TABLES.items():
        if not selected(name, only):
            continue
        overrides = [*base, *(smoke_overrides if smoke else gpu_overrides)]
        table = {"model": name, "overrides": smoke_overrides if smoke else gpu_overrides, "rows": []}
        report.data["tables"].append(table)
        rows: dict[str, dict[str, Any]] = {}
        for mode, mode_overrides in MODES:
            extra = [f"trainer.compile_backend={backend}"] if mode == COMPILED else []
            started = time.perf_counter()
            row = {"mode": mode, "overrides": mode_overrides + extra,
                   **measure_row([*overrides, *mode_overrides, *extra], warmup, steps, cycle)}
            rows[mode] = row
            table["rows"].append(row)
            compile_seconds(rows)
            shown = f"failed: {row['error']}" if row.get("error") else f"{row['steps_per_s']:.3f} steps/s"
            report.line(f"  {name} / {mode}: {shown} ({time.perf_counter() - started:.1f} s)")
            report.save()
        report.model_table(table)


def main() -> int:
    """Parse, run the selected sections, print and save."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU, every code path")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 30; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per row (default 5; smoke 1)")
    parser.add_argument("--only", default=None, help="comma-separated substrings of table/section names")
    parser.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu (--cpu-smoke: cpu)")
    parser.add_argument("--packed-k", default=None, help="trial counts for packed trials (default 1,2,4,8; smoke 1,2)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for a packed round or a DDP run")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument("--packed-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.packed_worker:
        return packed_worker(json.loads(args.packed_worker))

    import torch

    from audiolab.train.device import pick_device

    smoke = args.cpu_smoke
    if smoke and args.device not in ("auto", "cpu"):
        parser.error("--cpu-smoke runs on the CPU")
    device = pick_device("cpu" if smoke else args.device)
    steps = args.steps or (2 if smoke else 30)
    warmup = args.warmup if args.warmup is not None else (1 if smoke else 5)
    ks = [int(k) for k in (args.packed_k or ("1,2" if smoke else "1,2,4,8")).split(",")]
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    base = [*COMMON, f"trainer.device={device}", *(SMOKE if smoke else [])]

    report = Report(args.json)
    facts = header_facts(device)
    report.data |= {"header": facts, "settings": {"cpu_smoke": smoke, "steps": steps, "warmup": warmup,
                                                    "only": only, "packed_k": ks, "common_overrides": base}}
    report.line(f"# audiolab training speed{' (--cpu-smoke: tiny sizes on the CPU)' if smoke else ''}")
    report.line(f"torch {facts['torch']}, CUDA {facts['cuda']}, cuDNN {facts['cudnn']}, python {facts['python']}")
    report.line(f"device {facts['device']}: {facts['device_name']}"
                + (f", {facts['device_memory_gib']:.1f} GiB, {facts['device_count']} visible, bf16 "
                   f"{facts['bf16_supported']}, tf32 matmul/cudnn {facts['tf32_matmul']}/{facts['tf32_cudnn']}"
                   if device.type == "cuda" else ""))
    report.line(f"CPU count {facts['cpu_count']}, torch threads {facts['torch_threads']}, git commit "
                f"{facts['git_commit'] or 'unknown'}")
    if facts["memory_fraction_env"]:
        report.line(f"note: {MEMORY_FRACTION_ENV}={facts['memory_fraction_env']} caps every row's GPU memory")
    report.line(f"{warmup} warm-up and {steps} timed steps per row; every row: {' '.join(base)}")
    report.save()

    with contextlib.ExitStack() as cleanup:
        packed = selected(PACKED_NAME, only)
        packed_overrides = [*base, *PACKED_MODEL]

        def start_rounds() -> PackedRounds:
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="bench-packed-"))
            rounds = PackedRounds(Path(tmp), ks, packed_overrides, device, warmup, steps, args.timeout)
            cleanup.callback(rounds.close)
            return rounds

        # --cpu-smoke starts the trial processes now, so that their imports overlap the tables on a spare core; on a
        # GPU they start after the tables, so that no table row shares the CPU with them.
        rounds = start_rounds() if packed and smoke else None
        measure_tables(report, base, smoke, warmup, steps, only)
        if packed:
            report.data["packed"] = {"model": "convnext1d", "overrides": PACKED_MODEL, "rounds": []}
            report.line("")
            report.line(f"Packed trials: K copies of convnext1d ({'2 x 4096, debug=fast' if smoke else '8 x 16384'}, "
                        f"precision auto, no compile) at once, one process each")
            rounds = rounds or start_rounds()
            for k in ks:
                started = time.perf_counter()
                r = rounds.run(k)
                report.data["packed"]["rounds"].append(r)
                report.line(f"  K={k}: {'failed: ' + r['error'] if r.get('error') else 'done'} "
                            f"({time.perf_counter() - started:.1f} s)")
                report.save()
            packed_table(report)

    report.line("")
    if selected(DDP_NAME, only):
        n_gpu = torch.cuda.device_count() if device.type == "cuda" else 0
        if smoke or n_gpu < 2:
            why = ("there is one device: --cpu-smoke runs on the CPU" if smoke else
                   f"there is one device: {n_gpu} CUDA device{'s' if n_gpu != 1 else ''} visible, DDP needs 2 or more")
            report.line(f"DDP scaling: skipped, {why}")
            report.data["ddp"] = {"skipped": why}
        else:
            report.data["ddp"] = {"runs": []}
            for g in sorted({1, n_gpu}):
                report.data["ddp"]["runs"].append(ddp_run(g, steps, args.timeout))
                report.save()
            ddp_table(report)
        report.save()

    goals(report, smoke)
    return 0


def packed_table(report: Report) -> None:
    """Per-trial and total throughput against K=1."""
    from rich import box
    from rich.table import Table

    rounds = report.data["packed"]["rounds"]
    one = next((r for r in rounds if r["k"] == 1 and "total_audio_s_per_s" in r), None)
    t = Table(title="per trial: mean over the K trials (slowest-fastest); peak GiB and wait: the largest of any trial",
              box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("K", "threads", "per-trial steps/s", "per-trial audio s/s", "total steps/s", "total audio s/s",
                "total vs K=1", "per trial vs K=1", "peak GiB", "wait"):
        t.add_column(col, justify="right")
    for r in rounds:
        if "total_audio_s_per_s" not in r:
            t.add_row(str(r["k"]), str(r["omp_threads"]), "failed (below)", *["-"] * 7)
            continue
        trials = r["trials"]
        speeds = [x["steps_per_s"] for x in trials]
        spread = f" ({min(speeds):.2f}-{max(speeds):.2f})" if len(trials) > 1 else ""
        per = f"{r['per_trial_steps_per_s']:.3f}{spread}"
        vs = r["total_audio_s_per_s"] / one["total_audio_s_per_s"] if one else None
        vs_trial = r["per_trial_steps_per_s"] / one["per_trial_steps_per_s"] if one else None
        r["total_vs_k1"], r["per_trial_vs_k1"] = vs, vs_trial
        t.add_row(str(r["k"]), str(r["omp_threads"]), per, f"{r['total_audio_s_per_s'] / len(trials):.1f}",
                  f"{r['total_steps_per_s']:.3f}", f"{r['total_audio_s_per_s']:.1f}", fmt(vs, ".2f") + "x",
                  fmt(vs_trial, ".2f") + "x", f"{max(x['peak_mem_gib'] for x in trials):.2f}",
                  f"{100 * max(x['data_wait_fraction'] for x in trials):.1f} %")
    report.console.print(t)
    for r in rounds:
        if "total_audio_s_per_s" not in r:
            report.line(f"  K={r['k']} failed: {r['error']}")
    sys.stdout.flush()
    report.save()


def ddp_table(report: Report) -> None:
    """audio s/s on 1 and on all devices, and the scaling efficiency."""
    from rich import box
    from rich.table import Table

    runs = report.data["ddp"]["runs"]
    one = next((r for r in runs if r["gpus"] == 1 and not r.get("error")), None)
    t = Table(title="DDP scaling: run.py model=convnext1d_big under torchrun, 32 x 48640 per device, bf16",
              box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("GPUs", "global batch", "steps/s", "audio s/s", "vs 1 GPU", "efficiency", "peak GiB", "note"):
        t.add_column(col, justify="left" if col == "note" else "right")
    for r in runs:
        if r.get("error"):
            t.add_row(str(r["gpus"]), "-", "-", "-", "-", "-", "-", f"failed: {r['error']}")
            continue
        vs = r["audio_s_per_s"] / one["audio_s_per_s"] if one else None
        r["vs_one"], r["efficiency"] = vs, (vs / r["gpus"] if vs else None)
        t.add_row(str(r["gpus"]), str(r["global_batch"]), fmt(r["steps_per_s"], ".3f"), f"{r['audio_s_per_s']:.1f}",
                  fmt(vs, ".2f") + "x", fmt(r["efficiency"], ".2f"), fmt(r["peak_mem_gib"], ".2f"),
                  f"last log window of {r['steps']} steps (from step {r['steps'] // 2 + 1})")
    report.console.print(t)
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
