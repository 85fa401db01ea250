#!/usr/bin/env python
"""Render a folder of General-MIDI music with fluidsynth, for checking a recipe on audio that is not the
built-in generator's.

    apt-get install fluidsynth fluid-soundfont-gm          # Debian: the synthesizer and its GM soundfont
    python benchmarks/render_music.py gm_music --pieces 48 --seconds 20
    python run.py data=folder data.path=gm_music      # the default recipe on it

Each piece is a short arrangement written here: a chord progression in a random key and tempo, played as a
bass line, a comped or arpeggiated harmony and a melody, each on a General-MIDI instrument drawn from a
wide set (guitars, strings, brass, reeds, organs, synths; no piano, the built-in data's instrument), with
drums in half of them. The MIDI is written by the ~40 lines below rather than a MIDI package: a format-0
file of note events is all fluidsynth needs, and no package would be a dependency for this one script.
"""

from __future__ import annotations

import argparse
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
TICKS = 480  # per quarter note
# General-MIDI programs (0-based): guitars, basses, strings, ensembles, brass, reeds, pipes, synth leads/pads.
HARMONY = [24, 25, 26, 27, 16, 17, 19, 40, 42, 48, 49, 50, 52, 61, 89, 90, 92, 46, 11, 12]
MELODY = [56, 57, 60, 64, 65, 66, 68, 71, 73, 74, 80, 81, 40, 41, 22, 13, 104]
BASS = [32, 33, 34, 35, 38, 39, 43, 58]
MAJOR, MINOR = [0, 2, 4, 5, 7, 9, 11], [0, 2, 3, 5, 7, 8, 10]
PROGRESSIONS = [[0, 5, 3, 4], [0, 3, 4, 0], [0, 4, 5, 3], [5, 3, 0, 4], [0, 3, 0, 4], [1, 4, 0, 0]]


def _varlen(value: int) -> bytes:
    out = [value & 0x7F]
    while value := value >> 7:
        out.append(0x80 | (value & 0x7F))
    return bytes(reversed(out))


def midi_file(events: list[tuple[int, bytes]], tempo_us: int) -> bytes:
    """A format-0 Standard MIDI File from (absolute tick, message bytes) events."""
    track = bytearray(b"\x00\xff\x51\x03" + tempo_us.to_bytes(3, "big"))
    now = 0
    for tick, message in sorted(events, key=lambda e: (e[0], e[1][0] & 0xF0 != 0x80)):  # note-offs first
        track += _varlen(tick - now) + message
        now = tick
    track += b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS) + b"MTrk" + struct.pack(">I", len(track)) + track


def _note(events: list, channel: int, pitch: int, start: int, length: int, velocity: int) -> None:
    pitch = max(0, min(127, pitch))
    events.append((start, bytes([0x90 | channel, pitch, velocity])))
    events.append((start + max(1, length), bytes([0x80 | channel, pitch, 0])))


def compose_piece(rng: random.Random, seconds: float) -> tuple[bytes, str]:
    """One piece's MIDI bytes and a one-line description."""
    bpm = rng.randint(70, 150)
    tonic = rng.randint(36, 47)
    scale = rng.choice([MAJOR, MINOR])
    chords = rng.choice(PROGRESSIONS)
    programs = {"bass": rng.choice(BASS), "harmony": rng.choice(HARMONY), "melody": rng.choice(MELODY)}
    drums = rng.random() < 0.5
    events: list[tuple[int, bytes]] = []
    for channel, program in enumerate(programs.values()):
        events.append((0, bytes([0xC0 | channel, program])))
    bar = 4 * TICKS
    bars = max(1, round(seconds * bpm / 60 / 4))
    arpeggio = rng.random() < 0.5
    for b in range(bars):
        degree = chords[b % len(chords)]
        root = tonic + scale[degree]
        triad = [root + 12 + scale[(degree + i) % 7] - scale[degree] + (12 if degree + i >= 7 else 0)
                 for i in (0, 2, 4)]
        start = b * bar
        for beat in range(4):  # bass: root and fifth
            _note(events, 0, root - 12 + (7 if beat % 2 else 0), start + beat * TICKS, TICKS - 40, 90)
        if arpeggio:
            for i in range(8):
                _note(events, 1, triad[i % 3] + (12 if i >= 4 else 0), start + i * TICKS // 2, TICKS // 2, 70)
        else:
            for beat in (0, 2):
                for pitch in triad:
                    _note(events, 1, pitch, start + beat * TICKS, 2 * TICKS - 60, 65)
        t = start
        while t < start + bar:  # melody: scale steps around the chord, quarter and eighth notes
            length = rng.choice([TICKS, TICKS // 2, TICKS // 2, 2 * TICKS])
            pitch = tonic + 24 + scale[(degree + rng.choice([0, 2, 4, 1, 3])) % 7] + rng.choice([0, 0, 12])
            _note(events, 2, pitch, t, min(length, start + bar - t) - 20, rng.randint(70, 105))
            t += length
        if drums:
            for i in range(8):
                _note(events, 9, 42, start + i * TICKS // 2, 60, 60)  # closed hi-hat
            for beat in (0, 2):
                _note(events, 9, 36, start + beat * TICKS, 100, 100)  # kick
            for beat in (1, 3):
                _note(events, 9, 38, start + beat * TICKS, 100, 90)  # snare
    tempo_us = round(60_000_000 / bpm)
    what = (f"{bpm} bpm, {'major' if scale is MAJOR else 'minor'}, programs {programs}"
            f"{', drums' if drums else ''}, {'arpeggio' if arpeggio else 'chords'}")
    return midi_file(events, tempo_us), what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--pieces", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=int, default=44100)
    args = parser.parse_args()
    if shutil.which("fluidsynth") is None or not SOUNDFONT.is_file():
        sys.exit(f"needs fluidsynth and {SOUNDFONT}: apt-get install fluidsynth fluid-soundfont-gm")
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for i in range(args.pieces):
        midi, what = compose_piece(rng, args.seconds)
        mid, wav = args.out / f"piece{i:03d}.mid", args.out / f"piece{i:03d}.wav"
        mid.write_bytes(midi)
        subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.6", "-r", str(args.rate), "-F", str(wav),
                        str(SOUNDFONT), str(mid)], check=True, capture_output=True)
        mid.unlink()  # only the audio is data
        print(f"{wav.name}: {what}")


if __name__ == "__main__":
    main()
