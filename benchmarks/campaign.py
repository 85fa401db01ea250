#!/usr/bin/env python
"""The reliability campaign of issue 18, rerun: bad configs, bad audio files, and separate sweep processes.

1. Bad configs: 15 mistakes a user makes on the command line, each given to `run.py debug=fast`. Handled
   means: a non-zero exit, a message naming the key (or file), no Python traceback, and no run directory
   left behind.
2. Bad audio: 17 kinds of bad or awkward files in one folder, prepared with `audiolab data prepare`'s code.
   Handled means each file gets the outcome a user would want: skipped with a true reason, or used with a
   note (resampled, mixed down, clipped...), and nothing silent, constant or non-finite reaches the cache.
3. Duplicates: N processes started by hand on one SQLite study (the README's "several machines" recipe),
   each running trials until the study has `--trials`; counts the distinct parameter sets.

    python benchmarks/campaign.py                    # all three parts; prints one line per case and the figures
    python benchmarks/campaign.py --part configs     # or audio, duplicates
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class BadConfig:
    """One command-line mistake and the text its message must contain."""

    overrides: tuple[str, ...]
    names: str


BAD_CONFIGS = (
    BadConfig(("+unknown_key=1",), "unknown_key"),
    BadConfig(("+optim.lr_typo=5",), "optim.lr"),
    BadConfig(("+trainer.max_stpes=5",), "trainer.max_steps"),
    BadConfig(("optim.lr=abc",), "optim.lr"),
    BadConfig(("optim.lr=-1",), "optim.lr"),
    BadConfig(("model.channels=[1,8]",), "model.channels"),
    BadConfig(("model.factors=[2,2,2,2,2,2,2,2,2,2]",), "model.factors"),
    BadConfig(("data=folder", "data.path=/nonexistent/dir"), "data.path"),
    BadConfig(("logger=wandb", "logger.mode=sideways"), "logger.mode"),
    BadConfig(("trainer.max_steps=0",), "trainer.max_steps"),
    BadConfig(("data.batch_size=0",), "data.batch_size"),
    BadConfig(("model=no_such_model",), "model"),
    BadConfig(("loss.terms.mrstft.weight=-1",), "loss.terms.mrstft.weight"),
    BadConfig(("data.segment=4100",), "data.segment"),
    BadConfig(("optim.scheduler.decay=linear",), "optim.scheduler.decay"),
)


def run_configs(work: Path) -> tuple[int, int]:
    """Each bad config through the real CLI; (handled, tried)."""
    handled = 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HOME": str(work)}
    for i, case in enumerate(BAD_CONFIGS):
        outputs = work / f"configs{i:02d}"
        proc = subprocess.run([sys.executable, str(REPO / "run.py"), "debug=fast", "logger=none",
                               f"paths.outputs={outputs}", *case.overrides], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
        text = proc.stdout + proc.stderr
        left = sorted(p.name for p in outputs.iterdir()) if outputs.is_dir() else []
        checks = {"exit non-zero": proc.returncode != 0, f"names {case.names}": case.names in text,
                  "no traceback": "Traceback" not in text, "no run dir left": not left}
        ok = all(checks.values())
        handled += ok
        message = next((line for line in text.splitlines() if "error" in line.lower()), text.strip()[-160:])
        failed = ", ".join(k for k, v in checks.items() if not v)
        print(f"{'ok ' if ok else 'BAD'} {' '.join(case.overrides):45s} {failed or message[:150]}")
    return handled, len(BAD_CONFIGS)


@dataclass(frozen=True)
class BadAudio:
    """One file in the bad-audio folder and what a user would want done with it."""

    name: str
    outcome: str  # "skipped" (with a reason containing `says`), "noted" (used, a note containing it), "used"
    says: str = ""


BAD_AUDIO = (
    BadAudio("empty.wav", "skipped", "empty file"),
    BadAudio("text.flac", "skipped", "not readable as audio"),
    BadAudio("nan.wav", "skipped", "non-finite samples"),
    BadAudio("inf.wav", "skipped", "non-finite samples"),
    BadAudio("zeros.wav", "skipped", "digital silence"),
    BadAudio("hiss_below_lsb.wav", "skipped", "near silence"),
    BadAudio("out_of_phase.wav", "skipped", "silent once mixed to 1 channel"),
    BadAudio("dc.wav", "skipped", "a constant signal"),
    BadAudio("no_frames.mp3", "skipped", "not a readable MP3"),
    BadAudio("loop/self.wav", "skipped", "symlink loop"),
    BadAudio("short.wav", "skipped", "shorter than one segment"),
    BadAudio("clipped.wav", "noted", "clipped: "),
    BadAudio("truncated.wav", "noted", "truncated: read "),
    BadAudio("cut.mp3", "noted", "truncated: read "),
    BadAudio("hot_float.wav", "used"),  # peak 4.0 in float: the clipping guard scales it, nothing is clipped
    BadAudio("six_channels_8k.wav", "used"),  # mixed to mono and resampled
    BadAudio("stereo_192k.flac", "used"),
)


def _write_bad_audio(folder: Path, sr: int = 44100) -> None:
    """The 17 files of BAD_AUDIO, all real encodings written with soundfile."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    tone = lambda seconds, rate=sr, amp=0.5: (amp * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)  # noqa: E731
                                              + 0.01 * rng.standard_normal(int(seconds * rate))).astype(np.float32)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.flac").write_text("not audio at all\n" * 100)
    for name, bad in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        x = tone(2.0)
        x[sr] = bad
        sf.write(folder / name, x, sr, subtype="FLOAT")
    sf.write(folder / "zeros.wav", np.zeros(2 * sr, np.float32), sr, subtype="PCM_16")
    hiss = (1e-6 * rng.standard_normal(2 * sr)).astype(np.float32)
    hiss[sr] = 0.002  # one faint click: not digital silence, yet RMS below half an LSB
    sf.write(folder / "hiss_below_lsb.wav", hiss, sr, subtype="FLOAT")
    x = tone(2.0)
    sf.write(folder / "out_of_phase.wav", np.stack([x, -x], axis=1), sr, subtype="PCM_16")
    sf.write(folder / "dc.wav", np.full(2 * sr, 0.25, np.float32), sr, subtype="PCM_16")
    sf.write(folder / "good.mp3", tone(3.0), sr, format="MP3")
    encoded = (folder / "good.mp3").read_bytes()
    (folder / "good.mp3").unlink()
    (folder / "no_frames.mp3").write_bytes(b"ID3" + rng.bytes(5000))
    (folder / "cut.mp3").write_bytes(encoded[:len(encoded) // 2])
    (folder / "loop").mkdir()
    os.symlink("self.wav", folder / "loop" / "self.wav")
    sf.write(folder / "short.wav", tone(0.05), sr, subtype="PCM_16")
    sf.write(folder / "clipped.wav", np.clip(4 * tone(2.0), -1, 1), sr, subtype="PCM_16")
    sf.write(folder / "truncated.wav", tone(2.0), sr, subtype="PCM_16")
    data = (folder / "truncated.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(data[:len(data) // 2])  # the header still declares 2 s
    sf.write(folder / "hot_float.wav", 8 * tone(2.0), sr, subtype="FLOAT")
    sf.write(folder / "six_channels_8k.wav", np.stack([tone(2.0, 8000)] * 6, axis=1), 8000, subtype="PCM_16")
    sf.write(folder / "stereo_192k.flac", np.stack([tone(2.0, 192000)] * 2, axis=1), 192000, subtype="PCM_24")
    sf.write(folder / "good.wav", tone(3.0), sr, subtype="PCM_16")  # one clean file, so the folder trains


def _said_per_file(stdout: str) -> tuple[dict[str, str], dict[str, str]]:
    """(skip reasons, notes) by file name, from `audiolab data prepare`'s summary."""
    skipped: dict[str, str] = {}
    noted: dict[str, str] = {}
    section = None
    for line in stdout.splitlines():
        if line.startswith("skipped "):
            section = skipped
        elif line.endswith("on used files:"):
            section = noted
        elif line.startswith("  ") and section is not None and ": " in line:
            name, text = line.strip().split(": ", 1)
            section[name] = f"{section.get(name, '')} {text}".strip()
        elif not line.startswith("  "):
            section = None
    return skipped, noted


def run_audio(work: Path) -> tuple[int, int]:
    """Prepare the bad-audio folder with the real CLI; print each file's outcome; (handled, tried)."""
    folder = work / "bad_audio"
    _write_bad_audio(folder)
    proc = subprocess.run([sys.executable, "-m", "audiolab", "data", "prepare", str(folder),
                           f"paths.cache={work / 'cache'}", "data.segment=4096", "data.progress=false"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    skipped, noted = _said_per_file(proc.stdout)
    leaks = [line for line in proc.stderr.splitlines() if line.startswith(("Note:", "Warning:", "[src/"))]
    handled = 0
    for case in BAD_AUDIO:
        name = Path(case.name).name if case.name.startswith("loop/") else case.name
        said = skipped.get(case.name) or skipped.get(name)
        if case.outcome == "skipped":
            ok = said is not None and case.says in said
            got = f"skipped: {said}" if said else f"used ({noted.get(case.name, 'no note')})"
        elif case.outcome == "noted":
            ok = said is None and case.says in noted.get(case.name, "")
            got = f"skipped: {said}" if said else f"used, note: {noted.get(case.name, 'none')}"
        else:
            ok = said is None
            got = f"skipped: {said}" if said else f"used{', note: ' + noted[case.name] if case.name in noted else ''}"
        handled += ok
        print(f"{'ok ' if ok else 'BAD'} {case.name:22s} {got}")
    if leaks:
        print(f"BAD decoder lines leaked to stderr: {leaks[:3]}")
    if proc.returncode != 0:
        print(f"BAD prepare exited {proc.returncode}: {proc.stderr[-500:]}")
    return handled - (1 if leaks else 0) - (1 if proc.returncode else 0), len(BAD_AUDIO)


def run_duplicates(work: Path, processes: int, trials: int) -> tuple[int, int]:
    """`processes` sweep processes started together on one study; (distinct parameter sets, trials)."""
    import optuna

    outputs, db = work / "dup_outputs", work / "dup.db"
    args = [sys.executable, str(REPO / "run.py"), "hparams_search=lr_depth_lossw", "debug=fast", "logger=none",
            "trainer.max_steps=2", "trainer.val_every=2", f"paths.outputs={outputs}",
            f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.n_workers=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    procs = [subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
             for _ in range(processes)]
    codes = [p.wait(timeout=1800) for p in procs]
    study = optuna.load_study(study_name="lr_depth_lossw", storage=f"sqlite:///{db}")
    done = [t for t in study.get_trials() if t.state.is_finished()]
    distinct = {tuple(sorted(t.params.items())) for t in done}
    print(f"{processes} processes (exit codes {codes}), {time.perf_counter() - started:.0f} s: {len(done)} trials, "
          f"{len(distinct)} distinct parameter sets, {len(done) - len(distinct)} duplicates")
    return len(distinct), len(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("configs", "audio", "duplicates", "all"), default="all")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="audiolab-campaign-") as tmp:
        work = Path(tmp)
        figures = []
        if args.part in ("configs", "all"):
            handled, tried = run_configs(work)
            figures.append(f"bad configs handled: {handled}/{tried}")
        if args.part in ("audio", "all"):
            handled, tried = run_audio(work)
            figures.append(f"bad audio handled: {handled}/{tried}")
        if args.part in ("duplicates", "all"):
            distinct, done = run_duplicates(work, args.processes, args.trials)
            figures.append(f"{args.processes} separate processes: {done - distinct} duplicates in {done} trials")
        print("\n".join(figures))


if __name__ == "__main__":
    main()
