"""Folder datasets: bad input, mixed formats, the split, the cache, streaming decode, and training on a folder."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from audiolab.cli import main
from audiolab.config import ConfigError
from audiolab.data import decode
from audiolab.data.folder import (
    DataError,
    Preprocessing,
    build_folder_data,
    format_summary,
    prepare_folder,
    scan_folder,
    split_clips,
    split_score,
)
from audiolab.data.loudness import LoudnessMeter
from audiolab.runs.record import RunRecord
from conftest import REPO, run_cli

SR = 44100
SEGMENT = 4096


def _tone(seconds: float, sr: int, hz: float = 1000.0, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    rng = np.random.default_rng(round(hz))
    mono = amp * np.sin(2 * np.pi * hz * t) + 0.01 * rng.standard_normal(len(t))
    return np.stack([mono * (1 - 0.1 * c) for c in range(channels)], axis=1).astype(np.float32)


GOOD = {  # name -> (seconds, source rate, channels, soundfile subtype)
    "a_pcm16.wav": (0.5, 44100, 1, "PCM_16"),
    "b_pcm8.wav": (0.5, 44100, 1, "PCM_U8"),
    "c_pcm24.wav": (0.5, 44100, 2, "PCM_24"),
    "d_float32.wav": (0.5, 44100, 1, "FLOAT"),
    "e_96k.wav": (0.5, 96000, 1, "PCM_16"),
    "f_8k.wav": (0.5, 8000, 1, "PCM_16"),
    "g_six_channels.wav": (0.5, 48000, 6, "PCM_16"),
    "nested/h.flac": (0.5, 48000, 2, "PCM_16"),
    "nested/i.ogg": (0.5, 44100, 1, "VORBIS"),
    "nested/j.aiff": (0.5, 22050, 1, "PCM_16"),
    "nested/deeper/k.mp3": (0.5, 44100, 1, "MPEG_LAYER_III"),
}

BAD = {  # name -> start of the reason it must be skipped with
    "bad/empty.wav": "empty file (0 bytes)",
    "bad/truncated.wav": "not readable as audio: Error in WAV file",
    "bad/random_bytes.wav": "not readable as audio: Format not recognised",
    "bad/text.flac": "not readable as audio: Format not recognised",
    "bad/nan.wav": "non-finite samples (NaN or Inf) at 0.100 s",
    "bad/inf.wav": "non-finite samples (NaN or Inf) at 0.200 s",
    "bad/short.wav": "shorter than one segment",
    "bad/zeros.wav": "digital silence",
    "bad/loop_a.wav": "symlink loop",
    "bad/loop_b.wav": "symlink loop",
    "bad/dirloop/": "symlink loop: directory already scanned",
}


def write_good(root: Path, names: list[str] | None = None) -> None:
    """The valid files of the corpus, each with a different format, rate or channel count."""
    for name in names or list(GOOD):
        seconds, rate, channels, subtype = GOOD[name]
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, _tone(seconds, rate, hz=500 + 100 * len(name), channels=channels), rate, subtype=subtype)


def write_bad(root: Path) -> None:
    """Every kind of broken input the folder loader must skip, with a reason, without stopping."""
    bad = root / "bad"
    bad.mkdir(parents=True)
    (bad / "empty.wav").write_bytes(b"")
    sf.write(bad / "whole.wav", _tone(0.5, SR), SR, subtype="PCM_16")
    (bad / "truncated.wav").write_bytes((bad / "whole.wav").read_bytes()[:30])  # cut inside the header
    (bad / "whole.wav").unlink()
    (bad / "random_bytes.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    (bad / "text.flac").write_text("this is not audio\n" * 50)
    for name, at, value in (("nan.wav", 0.1, np.nan), ("inf.wav", 0.2, np.inf)):
        x = _tone(0.5, SR)
        x[round(at * SR)] = value
        sf.write(bad / name, x, SR, subtype="FLOAT")
    sf.write(bad / "short.wav", _tone(0.05, SR), SR, subtype="PCM_16")
    sf.write(bad / "zeros.wav", np.zeros((SR // 2, 1), np.float32), SR, subtype="PCM_16")
    os.symlink("loop_b.wav", bad / "loop_a.wav")
    os.symlink("loop_a.wav", bad / "loop_b.wav")
    (bad / "dirloop").symlink_to("..", target_is_directory=True)
    (bad / "notes.txt").write_text("ignored: not audio by extension")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    write_good(root)
    write_bad(root)
    return root


def _prepare(path: Path, cache: Path, workers: int = 1, **params) -> object:
    return prepare_folder(path, cache, Preprocessing(**params), workers=workers, progress=False)


def test_bad_input_is_skipped_with_a_reason_and_good_files_are_used(corpus: Path, tmp_path: Path) -> None:
    prepared = _prepare(corpus, tmp_path / "cache")
    split = split_clips(prepared.cache, SEGMENT, val_fraction=0.3)
    used = {prepared.cache.clips[i]["name"] for i in split.train + split.val}
    assert used == set(GOOD)
    reasons = {s["name"]: s["reason"] for s in prepared.cache.index["skipped"]}
    reasons |= {prepared.cache.clips[i]["name"]: "shorter than one segment" for i in split.too_short}
    assert set(reasons) == set(BAD)
    for name, expected in BAD.items():
        assert reasons[name].startswith(expected), (name, reasons[name])
    assert prepared.cache.index["ignored"] == {".txt": 1}
    summary = format_summary(prepared, split, SEGMENT)
    assert f"used {len(GOOD)} files" in summary and f"skipped {len(BAD)} files:" in summary
    for name in BAD:
        assert f"  {name}: " in summary


def test_mixed_rates_and_channels_come_out_at_the_target_rate_in_mono(corpus: Path, tmp_path: Path) -> None:
    cache = _prepare(corpus, tmp_path / "cache").cache
    assert cache.sample_rate == SR and cache.index["channels"] == 1 and cache.audio.dtype == np.int16
    for i, clip in enumerate(cache.clips):
        if clip["name"] not in GOOD:
            continue  # bad/short.wav: cached, but left out of both splits when loaded
        seconds, rate, channels, subtype = GOOD[clip["name"]]
        assert clip["source_rate"] == rate and clip["source_channels"] == channels
        assert abs(clip["length"] - seconds * SR) <= (1200 if subtype == "MPEG_LAYER_III" else 1)  # mp3 adds padding
        audio = cache.select([i]).crop(0, 0, clip["length"])[0]
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
        peak_hz = np.fft.rfftfreq(len(audio), 1 / SR)[spectrum.argmax()]
        assert peak_hz == pytest.approx(500 + 100 * len(clip["name"]), abs=5), clip["name"]
    six = cache.select([next(i for i, c in enumerate(cache.clips) if c["name"] == "g_six_channels.wav")])
    source = _tone(0.5, 48000, hz=500 + 100 * len("g_six_channels.wav"), channels=6).mean(axis=1)
    expected = AF.resample(torch.from_numpy(source), 48000, SR).numpy()
    assert np.abs(six.crop(0, 0, len(expected))[0] - expected).max() < 2e-4  # the mean of the six, resampled


def test_stereo_keeps_two_channels_and_duplicates_mono(tmp_path: Path) -> None:
    write_good(tmp_path / "src", ["a_pcm16.wav", "c_pcm24.wav", "g_six_channels.wav"])
    cache = _prepare(tmp_path / "src", tmp_path / "cache", channels=2).cache
    assert cache.audio.shape[0] == 2
    by_name = {c["name"]: cache.select([i]) for i, c in enumerate(cache.clips)}
    mono = by_name["a_pcm16.wav"].crop(0, 0, 1000)
    assert np.array_equal(mono[0], mono[1])
    stereo = by_name["c_pcm24.wav"].crop(0, 0, 1000)
    assert not np.array_equal(stereo[0], stereo[1])


def test_split_is_a_hash_of_the_path_and_stable_when_files_are_added(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(24):
        path = src / f"take{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, _tone(0.1, SR, hz=300 + 10 * i), SR, subtype="PCM_16")
    kwargs = dict(sample_rate=SR, segment=SEGMENT, batch_size=2, cache_dir=str(tmp_path / "cache"), val_fraction=0.25,
                  prepare_workers=1, progress=False)
    before = build_folder_data(str(src), **kwargs)
    assert before.val.names and before.train.names  # 24 files: the hash puts some in each
    for name in before.val.names:
        assert split_score(name) < 0.25
    for i in range(24, 40):
        sf.write(src / f"take{i:02d}.wav", _tone(0.1, SR, hz=300 + 10 * i), SR, subtype="PCM_16")
    after = build_folder_data(str(src), **kwargs)
    assert set(before.train.names) <= set(after.train.names) and set(before.val.names) <= set(after.val.names)
    assert len(after.train.names) + len(after.val.names) == 40
    assert len(list((tmp_path / "cache").glob("folder-*"))) == 1  # the superseded cache was removed


def test_cache_is_reused_when_nothing_changed_and_rebuilt_when_a_file_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_good(tmp_path / "src", ["a_pcm16.wav", "e_96k.wav"])
    decoded: list[str] = []
    real = decode.decode_file
    monkeypatch.setattr("audiolab.data.folder.decode_file", lambda *a, **k: decoded.append(a[1]) or real(*a, **k))
    first = _prepare(tmp_path / "src", tmp_path / "cache")
    assert first.built and sorted(decoded) == ["a_pcm16.wav", "e_96k.wav"]
    again = _prepare(tmp_path / "src", tmp_path / "cache")
    assert not again.built and len(decoded) == 2 and again.cache.directory == first.cache.directory
    sf.write(tmp_path / "src" / "a_pcm16.wav", _tone(0.7, SR), SR, subtype="PCM_16")  # new size and mtime
    changed = _prepare(tmp_path / "src", tmp_path / "cache")
    assert changed.built and changed.cache.directory != first.cache.directory and len(decoded) == 4
    assert {c["name"]: c["length"] for c in changed.cache.clips}["a_pcm16.wav"] == round(0.7 * SR)
    other_rate = _prepare(tmp_path / "src", tmp_path / "cache", sample_rate=22050)  # a parameter is in the key too
    assert other_rate.built and other_rate.cache.sample_rate == 22050


def test_training_reads_only_the_cache(tmp_path: Path) -> None:
    write_good(tmp_path / "src", ["a_pcm16.wav", "d_float32.wav", "e_96k.wav"])
    data = build_folder_data(str(tmp_path / "src"), SR, SEGMENT, 2, str(tmp_path / "cache"), val_fraction=0.5,
                             prepare_workers=1, progress=False)
    before = data.train.crop(0, 0, SEGMENT)
    shutil.rmtree(tmp_path / "src")
    assert np.array_equal(data.train.crop(0, 0, SEGMENT), before)


def test_no_usable_file_fails_naming_the_folder_and_reasons(tmp_path: Path) -> None:
    write_bad(tmp_path / "src")
    with pytest.raises(DataError) as err:
        build_folder_data(str(tmp_path / "src"), SR, SEGMENT, 2, str(tmp_path / "cache"), prepare_workers=1,
                          progress=False)
    message = str(err.value)
    assert str(tmp_path / "src") in message and "no usable training audio" in message
    assert "symlink loop" in message and "non-finite samples" in message and "empty file" in message
    with pytest.raises(DataError, match="data.path: .*nowhere"):
        build_folder_data(str(tmp_path / "nowhere"), SR, SEGMENT, 2, str(tmp_path / "cache"), progress=False)


def test_explicit_validation_folder(tmp_path: Path) -> None:
    write_good(tmp_path / "train", ["a_pcm16.wav", "e_96k.wav", "f_8k.wav"])
    write_good(tmp_path / "val", ["d_float32.wav"])
    data = build_folder_data(str(tmp_path / "train"), SR, SEGMENT, 2, str(tmp_path / "cache"),
                             val_path=str(tmp_path / "val"), prepare_workers=1, progress=False)
    assert sorted(data.train.names) == ["a_pcm16.wav", "e_96k.wav", "f_8k.wav"]
    assert data.val.names == ["val:d_float32.wav"]


def test_parallel_preparation_matches_serial(tmp_path: Path) -> None:
    write_good(tmp_path / "src", ["a_pcm16.wav", "c_pcm24.wav", "e_96k.wav", "g_six_channels.wav"])
    serial = _prepare(tmp_path / "src", tmp_path / "serial", workers=1).cache
    parallel = _prepare(tmp_path / "src", tmp_path / "parallel", workers=2).cache
    assert [c["name"] for c in serial.clips] == [c["name"] for c in parallel.clips]
    assert np.array_equal(np.asarray(serial.audio), np.asarray(parallel.audio))


def test_streaming_resampler_equals_one_shot_resampling() -> None:
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal((20011, 2))).astype(np.float32)
    for orig, new in ((48000, 44100), (96000, 44100), (8000, 44100), (44100, 44100)):
        expected = AF.resample(torch.from_numpy(x.T.copy()), orig, new).T.numpy()
        resampler = decode.StreamingResampler(orig, new, channels=2)
        pieces, at = [], 0
        while at < len(x):
            size = int(rng.integers(0, 3000))
            pieces.append(resampler.push(x[at:at + size]))
            at += size
        pieces.append(resampler.flush())
        got = np.concatenate(pieces)
        assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-5, (orig, new)


def test_a_long_file_is_decoded_in_blocks_not_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seconds, rate = 20, 48000
    with sf.SoundFile(tmp_path / "long.wav", "w", rate, 2, subtype="PCM_16") as out:
        for i in range(seconds):
            out.write(_tone(1.0, rate, hz=200 + 10 * i, channels=2))
    whole_bytes = seconds * rate * 2 * 4  # the decoded file as float32: 7.7 MB
    monkeypatch.setattr(decode, "BLOCK_FRAMES", 8192)
    tracemalloc.start()
    try:
        result = decode.decode_file(tmp_path / "long.wav", "long.wav", SR, 1, tmp_path / "shard.f32")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok and result.frames == seconds * SR
    assert peak < whole_bytes / 20, f"peak numpy memory {peak / 1e6:.1f} MB"
    shard = np.fromfile(tmp_path / "shard.f32", np.float32)
    monkeypatch.setattr(decode, "BLOCK_FRAMES", 1 << 20)
    decode.decode_file(tmp_path / "long.wav", "long.wav", SR, 1, tmp_path / "big-blocks.f32")
    assert np.abs(shard - np.fromfile(tmp_path / "big-blocks.f32", np.float32)).max() < 1e-5


def test_normalisation_and_the_clipping_guard(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "quiet.wav", _tone(1.0, SR, amp=0.05), SR, subtype="PCM_16")
    sf.write(src / "hot.wav", _tone(1.0, SR, amp=1.5), SR, subtype="FLOAT")  # float WAVs may exceed 1
    plain = _prepare(src, tmp_path / "c0")
    hot = next(c for c in plain.cache.clips if c["name"] == "hot.wav")
    assert hot["notes"][0].startswith("scaled by -3.") and "avoid clipping" in hot["notes"][0]
    assert "clipped_samples" not in hot
    peak = _prepare(src, tmp_path / "c1", normalize="peak", peak_db=-6.0).cache
    for i in range(2):
        audio = peak.select([i]).crop(0, 0, SR)
        assert 20 * math.log10(np.abs(audio).max()) == pytest.approx(-6.0, abs=0.01)
    loud = _prepare(src, tmp_path / "c2", normalize="loudness", loudness_lufs=-23.0).cache
    for i in range(2):
        meter = LoudnessMeter(SR, 1)
        meter.update(loud.select([i]).crop(0, 0, SR).T)
        assert meter.lufs() == pytest.approx(-23.0, abs=0.1)


def test_prepare_command_prints_the_summary(corpus: Path, tmp_path: Path, cli_env: dict[str, str], capsys) -> None:
    proc = run_cli(["data", "prepare", str(corpus), f"paths.cache={tmp_path / 'cache'}", "data.segment=4096",
                    "data.prepare_workers=1", "data.progress=false"], cli_env, tmp_path, script="audiolab/__main__.py")
    assert proc.returncode == 0, proc.stderr
    assert f"used {len(GOOD)} files" in proc.stdout and f"skipped {len(BAD)} files:" in proc.stdout
    assert "  bad/text.flac: not readable as audio: Format not recognised" in proc.stdout
    assert "(built in" in proc.stdout
    assert main(["data", "prepare", str(corpus), f"paths.cache={tmp_path / 'cache'}", "data.segment=4096"]) == 0
    assert "(reused)" in capsys.readouterr().out
    assert main(["data", "prepare", str(corpus), f"paths.cache={tmp_path / 'cache'}", "data.dtype=int8"]) == 2
    assert "data.dtype='int8'" in capsys.readouterr().err
    write_bad(tmp_path / "only_bad")
    assert main(["data", "prepare", str(tmp_path / "only_bad"), f"paths.cache={tmp_path / 'cache'}"]) == 1
    out = capsys.readouterr()
    assert "used 0 files" in out.out and "no usable training audio" in out.err


# Root reads any file whatever its mode: the child first drops the two capabilities that allow that
# (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so the permission check applies to it as to any user.
_DROP_DAC_CAPABILITIES = """
import ctypes, os
if os.geteuid() == 0:
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()
    assert libc.capget(ctypes.byref(header), data) == 0, ctypes.get_errno()
    data[0].effective &= ~0b110
    data[0].permitted &= ~0b110
    assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
"""


def test_unreadable_file_is_skipped(tmp_path: Path) -> None:
    write_good(tmp_path / "src", ["a_pcm16.wav", "e_96k.wav"])
    sf.write(tmp_path / "src" / "locked.wav", _tone(0.5, SR), SR, subtype="PCM_16")
    os.chmod(tmp_path / "src" / "locked.wav", 0)
    code = _DROP_DAC_CAPABILITIES + (
        "import json, sys\n"
        "assert not os.access(sys.argv[1] + '/locked.wav', os.R_OK)\n"
        "from audiolab.data.folder import Preprocessing, prepare_folder\n"
        "p = prepare_folder(sys.argv[1], sys.argv[2], Preprocessing(), workers=1, progress=False)\n"
        "print(json.dumps([p.cache.index['skipped'], [c['name'] for c in p.cache.clips]]))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "src"), str(tmp_path / "cache")], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    skipped, used = json.loads(proc.stdout.strip().splitlines()[-1])
    assert skipped == [{"name": "locked.wav", "reason": "not readable: permission denied"}]
    assert used == ["a_pcm16.wav", "e_96k.wav"]


def test_scan_never_enters_a_directory_twice(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    sf.write(tmp_path / "a" / "b" / "x.wav", _tone(0.2, SR), SR)
    (tmp_path / "a" / "b" / "up").symlink_to("../..", target_is_directory=True)
    (tmp_path / "alias").symlink_to("a", target_is_directory=True)
    scan = scan_folder(tmp_path)
    assert [f.rel for f in scan.files] == ["a/b/x.wav"] or [f.rel for f in scan.files] == ["alias/b/x.wav"]
    assert len(scan.skipped) == 2 and all("already scanned" in s.reason for s in scan.skipped)


def test_train_end_to_end_on_a_folder(corpus: Path, run_tiny) -> None:
    run_dir, result = run_tiny("data=folder", f"data.path={corpus}", "data.prepare_workers=1", "data.num_workers=2",
                               "data.val_fraction=0.3", "augment=full", "trainer.max_steps=2", "trainer.val_every=2")
    assert result.status == "completed" and math.isfinite(result.best_value)
    record = RunRecord(run_dir).data
    assert record["status"] == "completed" and record["data"]["train_files"] + record["data"]["val_files"] == len(GOOD)
    assert record["data"]["skipped"] == len(BAD)
    log = (run_dir / "train.log").read_text()
    assert "skipped 11 files:" in log and "augmentations: pitch(" in log


def test_channel_mismatch_between_data_and_model_is_a_config_error(corpus: Path, run_tiny) -> None:
    with pytest.raises(ConfigError, match=r"model.channels\[0\]=1 does not match data.channels=2"):
        run_tiny("data=folder", f"data.path={corpus}", "data.channels=2")


def test_what_training_sees_is_checked_after_the_mixdown(tmp_path: Path) -> None:
    """Out-of-phase stereo mixed to mono is silence; a DC file has no audio; a clipped file gets a true note."""
    src = tmp_path / "src"
    src.mkdir()
    tone = _tone(2.0, SR, amp=0.5)[:, 0]
    sf.write(src / "good.wav", tone, SR, subtype="PCM_16")
    sf.write(src / "out_of_phase.wav", np.stack([tone, -tone], axis=1), SR, subtype="PCM_16")
    sf.write(src / "dc.wav", np.full(2 * SR, 0.25, np.float32), SR, subtype="PCM_16")
    sf.write(src / "clipped.wav", np.clip(_tone(2.0, SR, amp=4.0), -1, 1), SR, subtype="PCM_16")
    prepared = _prepare(src, tmp_path / "cache")
    reasons = {s["name"]: s["reason"] for s in prepared.cache.index["skipped"]}
    assert reasons["out_of_phase.wav"].startswith("silent once mixed to 1 channel")
    assert reasons["dc.wav"].startswith("a constant signal (DC at +0.2500")
    clipped = next(c for c in prepared.cache.clips if c["name"] == "clipped.wav")
    assert [n for n in clipped["notes"] if n.startswith("clipped: ")], clipped["notes"]
    assert not [n for n in clipped["notes"] if "-0.0 dB" in n], clipped["notes"]
    good = next(c for c in prepared.cache.clips if c["name"] == "good.wav")
    assert not good.get("notes")


def _damaged_mp3s(folder: Path) -> None:
    """A real MP3, the same cut short, with its frames overwritten mid-file, and with no audio frame left."""
    folder.mkdir()
    sf.write(folder / "good.mp3", _tone(3.0, SR)[:, 0], SR, format="MP3")
    encoded = (folder / "good.mp3").read_bytes()
    rng = np.random.default_rng(7)
    (folder / "cut.mp3").write_bytes(encoded[:len(encoded) // 2])
    third = len(encoded) // 3
    (folder / "overwritten.mp3").write_bytes(encoded[:third] + rng.bytes(third) + encoded[2 * third:])
    (folder / "no_frames.mp3").write_bytes(b"ID3" + rng.bytes(5000))


def test_a_damaged_mp3_gets_mpg123s_reason_and_nothing_leaks_to_stderr(tmp_path: Path, cli_env: dict[str, str]) -> None:
    _damaged_mp3s(tmp_path / "mp3")
    proc = run_cli(["data", "prepare", str(tmp_path / "mp3"), f"paths.cache={tmp_path / 'cache'}",
                    "data.segment=4096", "data.prepare_workers=1", "data.progress=false"], cli_env, tmp_path,
                   script="audiolab/__main__.py")
    assert proc.returncode == 0, proc.stderr
    assert "no_frames.mp3: not a readable MP3: no valid MPEG audio frame (mpg123: " in proc.stdout, proc.stdout
    assert "File does not exist" not in proc.stdout + proc.stderr
    assert not [line for line in proc.stderr.splitlines() if line.startswith(("Note:", "Warning:", "[src/libmpg123"))]
    prepared = _prepare(tmp_path / "mp3", tmp_path / "cache")
    said = {c["name"]: " ".join(c.get("notes", [])) for c in prepared.cache.clips}
    said |= {s["name"]: s["reason"] for s in prepared.cache.index["skipped"]}
    assert said["good.mp3"] == ""
    assert said["cut.mp3"].startswith("truncated: read "), said
    # skipped or used with a note, as mpg123 manages to resync: either way its own account is given
    assert "damaged MPEG data" in said["overwritten.mp3"] and "mpg123: Illegal Audio-MPEG-Header" in said[
        "overwritten.mp3"], said


def test_other_c_stderr_output_still_reaches_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    """Only mpg123's lines are taken; anything else written to fd 2 meanwhile is printed after the decode."""
    with decode._decoder_messages() as lines:
        os.write(2, b"Note: Illegal Audio-MPEG-Header 0x00 at offset 1.\nsomething else\n")
    assert lines == ["Note: Illegal Audio-MPEG-Header 0x00 at offset 1."]
    assert capfd.readouterr().err == "something else\n"


def test_a_wav_cut_short_is_used_with_a_note_of_what_its_header_declared(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "whole.wav", _tone(2.0, SR), SR, subtype="PCM_16")
    encoded = (src / "whole.wav").read_bytes()
    (src / "cut.wav").write_bytes(encoded[:len(encoded) // 2])  # the header still declares 2 s
    prepared = _prepare(src, tmp_path / "cache")
    notes = {c["name"]: c.get("notes", []) for c in prepared.cache.clips}
    assert notes["whole.wav"] == []
    assert notes["cut.wav"] == [f"truncated: read {(len(encoded) // 2 - 44) // 2} of {2 * SR} declared frames"]
