"""Deterministic generator of piano-like music (numpy only), the project's built-in training data.

Synthesis model
---------------
Each piece is composed and then rendered note by note into a float64 buffer.

Composition. A piece draws a key (root and one of five seven-note modes), a tempo (log-uniform in the
tempo range), a metre (3/4 or 4/4), a looping four-bar chord progression, a sustain-pedal flag and an
articulation (staccato to legato). It then mixes up to ``max_melody_lines`` melody lines (a random walk
over scale degrees around a register centre, snapping to chord tones on beats, with piece-specific
rhythm weights over 16th to dotted-half notes, rests, phrase endings and occasional double stops) with an
accompaniment (per bar either block chords of 3-4 notes from the key, struck together with a few ms of
spread, or a broken-chord figure in 8ths/16ths, with an optional bass note on downbeats). Velocities
follow a slow per-phrase dynamic curve with downbeat accents and jitter; onsets get a few ms of jitter.
Every pitch is folded by octaves into ``[pitch_min, pitch_max]``.

Sound. A note of MIDI pitch m has fundamental f0 = 440 * 2^((m - 69) / 12) and partials n = 1..N with
stiff-string inharmonicity f_n = n f0 sqrt(1 + B n^2), B log-interpolated across the pitch range from
``inharmonicity_min`` (low notes) to ``inharmonicity_max`` (high notes); partials at or above 0.95
Nyquist are dropped. Amplitudes fall as n^-(1.8 - 1.2 v) times a velocity-dependent low-pass
exp(-f_n / (2000 + 10000 v^2)) Hz and a hammer-position comb |sin(pi n x0)|, x0 ~ U(1/9, 1/7), so harder
notes (velocity v in (0, 1]) are brighter; loudness scales as v^2. Every partial is played by two
unison strings detuned by up to ``unison_detune_cents`` with slightly different decay rates (beating and
a two-stage decay), each with a random phase. Decay is exponential per partial: the fundamental's T60
falls from ~14 s at A0 to ~0.5 s at the top and higher partials decay faster. A raised-cosine attack
of ``attack_ms``, an exponential damper release reaching -60 dB after ``release_ms`` at note-off and a
short noisy hammer thump at onset complete the note. A note is rendered only until its slowest partial
reaches -60 dB (or note-off plus release, or ``max_note_seconds``), with a 10 ms fade at the end.

A small room is then added to the piece: the piece convolved (FFT) with an exponentially decaying
noise tail (RT60 ~ U(0.3, ``reverb_seconds``), darker late part, 5-20 ms pre-delay), mixed in at an
amplitude ratio ~ U(0, ``reverb_mix``); ``reverb_mix=0`` turns it off.

Rendering is vectorised: the sum of damped complex exponentials over a note is computed block-wise as
a real matrix product (blocks x partials) @ (partials x block-samples), so the cost per note is BLAS
work over its samples x partials, cut into products small enough that BLAS stays single-threaded
(about 1.5 s per 180 s of audio on one core). The piece is summed in float64, faded out over its last
10 ms, normalised to a peak of ``peak`` and returned as float32. Output is bit-identical for the same
parameters and seed on the same machine and numpy/BLAS build, whatever the BLAS thread count; other
CPUs or builds may differ in the last bits (SIMD transcendental functions and BLAS kernels vary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_LN1000 = math.log(1000.0)  # decay to -60 dB, in nepers
_BLOCK = 256  # samples per block in the block-wise oscillator bank
# Matrix products are cut into pieces of at most this many multiply-adds: OpenBLAS runs such small
# products on one thread, which is faster here and keeps the output independent of the thread count.
_MAX_MATMUL_MACS = 1 << 18

_SCALES: tuple[tuple[int, ...], ...] = (
    (0, 2, 4, 5, 7, 9, 11),  # major
    (0, 2, 3, 5, 7, 8, 10),  # natural minor
    (0, 2, 3, 5, 7, 8, 11),  # harmonic minor
    (0, 2, 3, 5, 7, 9, 10),  # dorian
    (0, 2, 4, 5, 7, 9, 10),  # mixolydian
)
_SCALE_WEIGHTS = np.array([0.4, 0.25, 0.15, 0.1, 0.1])
# Chord progressions as 0-based scale degrees (I = 0, ii = 1, IV = 3, V = 4, vi = 5), one chord per bar.
_PROGRESSIONS: tuple[tuple[int, ...], ...] = (
    (0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (1, 4, 0, 0), (5, 3, 0, 4), (0, 3, 0, 4), (0, 5, 1, 4),
    (3, 4, 2, 5),
)
_MELODY_DURS = np.array([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0])  # in beats
_MELODY_STEPS = np.array([-4, -3, -2, -1, 0, 1, 2, 3, 4, -7, 7])  # in scale degrees
_MELODY_STEP_P = np.array([0.03, 0.06, 0.14, 0.22, 0.06, 0.22, 0.14, 0.06, 0.03, 0.02, 0.02])
_ARPEGGIOS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2, 3), (3, 2, 1, 0), (0, 1, 2, 3, 2, 1), (0, 2, 1, 2), (0, 2, 3, 2), (0, 1, 2, 1),
)


@dataclass(frozen=True)
class PianoParams:
    """Every knob that changes the generated audio; hash it (or `dataclasses.asdict`) for a cache key."""

    sample_rate: int = 44100
    clip_seconds: float = 10.0  # length of one piece
    tempo_min_bpm: float = 60.0
    tempo_max_bpm: float = 160.0
    pitch_min: int = 28  # MIDI, E1
    pitch_max: int = 100  # MIDI, E7
    max_melody_lines: int = 2
    chord_prob: float = 0.4  # mean probability that an accompaniment bar is block chords (else broken)
    rest_prob: float = 0.12  # probability that a melody/accompaniment event is a rest
    pedal_prob: float = 0.4  # probability that a piece holds notes with the sustain pedal
    max_partials: int = 24
    inharmonicity_min: float = 1e-4  # B of the lowest notes
    inharmonicity_max: float = 1e-3  # B of the highest notes
    unison_detune_cents: float = 1.5  # max detuning of the second unison string
    velocity_min: float = 0.25  # velocities are in (0, 1]; loudness scales as velocity^2
    velocity_max: float = 1.0
    attack_ms: float = 3.0
    release_ms: float = 150.0  # damper release time to -60 dB after note-off at middle C (longer for bass)
    chord_spread_ms: float = 12.0  # max onset spread of the notes of a chord
    timing_jitter_ms: float = 5.0  # std of onset jitter
    hammer_noise: float = 0.05  # level of the noisy hammer transient relative to the note
    max_note_seconds: float = 5.0
    reverb_mix: float = 0.3  # max wet/dry amplitude ratio of the room; each piece draws U(0, reverb_mix)
    reverb_seconds: float = 1.2  # max room RT60; each piece draws U(0.3, reverb_seconds)
    peak: float = 0.5  # peak normalisation target (linear, <= 1)
    version: int = 1  # bump whenever the synthesis changes

    def __post_init__(self) -> None:
        """Reject parameter combinations that cannot produce valid audio."""
        if self.sample_rate <= 0 or self.clip_seconds <= 0:
            raise ValueError("sample_rate and clip_seconds must be positive")
        if not 0 < self.tempo_min_bpm <= self.tempo_max_bpm:
            raise ValueError("need 0 < tempo_min_bpm <= tempo_max_bpm")
        if not 0 < self.pitch_min <= self.pitch_max:
            raise ValueError("need 0 < pitch_min <= pitch_max")
        if not 0 < self.velocity_min <= self.velocity_max <= 1:
            raise ValueError("need 0 < velocity_min <= velocity_max <= 1")
        if not 0 < self.peak <= 1:
            raise ValueError("peak must be in (0, 1]")
        if self.max_partials < 1 or self.max_melody_lines < 0 or self.max_note_seconds <= 0:
            raise ValueError("max_partials >= 1, max_melody_lines >= 0, max_note_seconds > 0 required")
        if not 0 < self.inharmonicity_min <= self.inharmonicity_max:
            raise ValueError("need 0 < inharmonicity_min <= inharmonicity_max")
        if not all(0 <= q <= 1 for q in (self.chord_prob, self.rest_prob, self.pedal_prob)):
            raise ValueError("chord_prob, rest_prob and pedal_prob must be in [0, 1]")
        if self.reverb_mix < 0 or self.reverb_seconds <= 0:
            raise ValueError("need reverb_mix >= 0 and reverb_seconds > 0")


# ----------------------------------------------------------------------------------------------------
# Composition
# ----------------------------------------------------------------------------------------------------

class _Score:
    """Note list of one piece (onset s, MIDI pitch, velocity, held s) plus the piece's musical context."""

    def __init__(self, params: PianoParams, rng: np.random.Generator) -> None:
        """Draw the key, tempo, metre, progression and style of one piece."""
        self.p = params
        self.rng = rng
        self.duration = params.clip_seconds
        self.beat = 60.0 / math.exp(rng.uniform(math.log(params.tempo_min_bpm),
                                                math.log(params.tempo_max_bpm)))
        self.meter = int(rng.choice([3, 4], p=[0.25, 0.75]))
        self.bar = self.meter * self.beat
        self.scale = _SCALES[int(rng.choice(len(_SCALES), p=_SCALE_WEIGHTS))]
        self.tonic = 12 + int(rng.integers(12))  # degree 0 is this MIDI pitch (octave 0)
        n_bars = int(math.ceil(self.duration / self.bar)) + 1
        prog = _PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))]
        self.chords = [prog[i % len(prog)] if rng.random() > 0.12 else int(rng.integers(7))
                       for i in range(n_bars)]
        self.sevenths = rng.random() < 0.3
        self.pedal = rng.random() < params.pedal_prob
        self.legato = rng.uniform(0.55, 1.0)
        self.dyn_base = rng.uniform(0.3, 0.85)
        self.dyn_depth = rng.uniform(0.05, 0.25)
        self.phrase = int(rng.choice([2, 4])) * self.bar
        self.dyn_phase = rng.uniform(0, 2 * math.pi)
        self.onsets: list[float] = []
        self.pitches: list[int] = []
        self.velocities: list[float] = []
        self.helds: list[float] = []

    def midi(self, degree: int) -> int:
        """MIDI pitch of a scale degree (degree 0 = tonic in octave 0)."""
        return self.tonic + 12 * (degree // 7) + self.scale[degree % 7]

    def degree_near(self, pitch: float) -> int:
        """Scale degree whose pitch is nearest to `pitch`."""
        d = int(round((pitch - self.tonic) * 7 / 12))
        return min((d - 1, d, d + 1), key=lambda k: abs(self.midi(k) - pitch))

    def chord_at(self, t: float) -> int:
        """Root degree of the chord sounding at time t."""
        return self.chords[min(int(t / self.bar), len(self.chords) - 1)]

    def chord_tones(self, root: int) -> list[int]:
        """Degrees of the (triad or seventh) chord on `root`, within one octave."""
        return [root, root + 2, root + 4] + ([root + 6] if self.sevenths else [])

    def velocity(self, t: float, accent: float = 0.0, layer: float = 0.0) -> float:
        """Velocity at time t: phrase-level dynamic curve, accent, layer offset and jitter, in the range."""
        level = (self.dyn_base + self.dyn_depth * math.sin(2 * math.pi * t / self.phrase + self.dyn_phase)
                 + accent + layer + self.rng.normal(0.0, 0.05))
        level = min(max(level, 0.0), 1.0)
        return self.p.velocity_min + (self.p.velocity_max - self.p.velocity_min) * level

    def held(self, t: float, nominal: float) -> float:
        """Key-down time of a note: articulated nominal length, or up to the next pedal change."""
        held = max(nominal * self.legato, 0.04)
        if self.pedal:
            held = max(held, (math.floor(t / self.bar + 1e-9) + 1) * self.bar - t)
        return held

    def add(self, t: float, pitch: int, vel: float, held: float) -> None:
        """Append one note."""
        self.onsets.append(t)
        self.pitches.append(pitch)
        self.velocities.append(vel)
        self.helds.append(held)

    def add_melody(self, line: int) -> None:
        """A melody line: random walk over the scale with piece-specific rhythm, rests and phrases."""
        rng = self.rng
        center = rng.uniform(62.0, 88.0) - 14.0 * line
        durs = _MELODY_DURS.copy()
        weights = rng.dirichlet(np.full(len(durs), 0.6))
        if line > 0:  # a counter-line moves more slowly
            weights = weights * np.linspace(0.3, 1.7, len(durs))
            weights /= weights.sum()
        degree = self.degree_near(center)
        double_stop_p = 0.5 * self.p.chord_prob * rng.uniform(0.0, 1.0)
        t = float(rng.choice([0.0, self.beat, 2 * self.beat], p=[0.6, 0.25, 0.15])) if line else 0.0
        while t < self.duration:
            d = float(durs[rng.choice(len(durs), p=weights)]) * self.beat
            boundary = (math.floor(t / self.phrase + 1e-9) + 1) * self.phrase
            phrase_end = t + d >= boundary - 1e-9
            if phrase_end:  # hold the last note of a phrase up to the phrase boundary
                d = boundary - t
            if rng.random() < self.p.rest_prob:  # rests last at most a beat
                t += min(d, self.beat)
                continue
            degree += int(rng.choice(_MELODY_STEPS, p=_MELODY_STEP_P))
            pitch = self.midi(degree)
            if pitch > center + 10:
                degree -= 3
            elif pitch < center - 10:
                degree += 3
            on_beat = abs(t / self.beat - round(t / self.beat)) < 1e-6
            if on_beat and rng.random() < 0.5:
                classes = {c % 7 for c in self.chord_tones(self.chord_at(t))}
                degree = min((k for k in range(degree - 3, degree + 4) if k % 7 in classes),
                             key=lambda k: abs(k - degree))
            on_bar = abs(t / self.bar - round(t / self.bar)) < 1e-6
            vel = self.velocity(t, 0.1 if on_bar else 0.0, -0.15 if line else 0.0)
            held = self.held(t, d)
            self.add(t, self.midi(degree), vel, held)
            if rng.random() < double_stop_p:  # a third or a sixth below
                self.add(t, self.midi(degree - int(rng.choice([2, 5]))), vel, held)
            t += d
            if phrase_end and rng.random() < 0.6:  # breathe at the start of the next phrase
                t += float(rng.choice([0.5, 1.0])) * self.beat

    def add_accompaniment(self, dense: bool) -> None:
        """Block chords or broken-chord figures per bar, with an optional bass note on downbeats."""
        rng, p = self.rng, self.p
        center = rng.uniform(45.0, 64.0)
        bass_center = center - rng.uniform(12.0, 24.0)
        octave_bass = rng.random() < 0.3  # left-hand octaves
        bass_p = rng.uniform(0.0, 1.0)
        chord_p = min(max(p.chord_prob + rng.uniform(-0.3, 0.3), 0.0), 1.0)
        stride_p = [0.7, 0.3, 0.0] if dense else [0.5, 0.3, 0.2]
        stride = float(rng.choice([1.0, 2.0, float(self.meter)], p=stride_p))  # block chords
        step = float(rng.choice([0.25, 0.5, 1.0], p=[0.3, 0.5, 0.2]))  # broken chords
        figure = _ARPEGGIOS[int(rng.integers(len(_ARPEGGIOS)))]
        n_bars = int(math.ceil(self.duration / self.bar))
        spread = p.chord_spread_ms / 1000.0
        base, bass_base = self.degree_near(center), self.degree_near(bass_center)
        for b in range(n_bars):
            t0 = b * self.bar
            root = self.chords[b]
            tones = self.chord_tones(root)
            voicing = sorted(self.midi(base + (c - base) % 7) for c in tones)  # lowest voicing >= centre
            if rng.random() < bass_p:
                bass = self.midi(bass_base + (root - bass_base) % 7)
                self.add(t0, bass, self.velocity(t0, 0.05), self.held(t0, self.bar))
                if octave_bass:
                    self.add(t0, bass - 12, self.velocity(t0, 0.05), self.held(t0, self.bar))
            if rng.random() < chord_p:
                for k in np.arange(0.0, self.meter - 1e-9, stride):
                    t = t0 + k * self.beat
                    if k > 0 and rng.random() < p.rest_prob:
                        continue
                    notes = voicing[:3] if len(voicing) == 3 or rng.random() < 0.5 else voicing
                    if len(notes) == 3 and rng.random() < 0.5:
                        notes = notes + [notes[0] + 12]
                    held = self.held(t, stride * self.beat)
                    for pitch in notes:
                        vel = self.velocity(t, 0.08 if k == 0 else 0.0, -0.12)
                        self.add(t + rng.uniform(0.0, spread), pitch, vel, held)
            else:
                pattern = voicing + [voicing[0] + 12] if len(voicing) == 3 else voicing
                for i, k in enumerate(np.arange(0.0, self.meter - 1e-9, step)):
                    t = t0 + k * self.beat
                    if k > 0 and rng.random() < p.rest_prob:
                        continue
                    vel = self.velocity(t, 0.06 if k == 0 else 0.0, -0.15)
                    self.add(t, pattern[figure[i % len(figure)]], vel, self.held(t, step * self.beat))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Onsets (s, jittered), pitches folded into the range, velocities, held times; sorted by onset."""
        p = self.p
        onsets = np.asarray(self.onsets, dtype=np.float64)
        onsets = onsets + self.rng.normal(0.0, p.timing_jitter_ms / 1000.0, len(onsets))
        onsets = np.clip(onsets, 0.0, None)
        pitches = np.asarray(self.pitches, dtype=np.int64)
        if p.pitch_max - p.pitch_min >= 11:
            pitches = np.where(pitches < p.pitch_min, pitches + 12 * ((p.pitch_min - pitches + 11) // 12),
                               pitches)
            pitches = np.where(pitches > p.pitch_max, pitches - 12 * ((pitches - p.pitch_max + 11) // 12),
                               pitches)
        pitches = np.clip(pitches, p.pitch_min, p.pitch_max)
        order = np.argsort(onsets, kind="stable")
        return (onsets[order], pitches[order], np.asarray(self.velocities)[order],
                np.asarray(self.helds)[order])


def _compose(params: PianoParams, rng: np.random.Generator) -> _Score:
    """Compose one piece: a mix of melody lines and an accompaniment in a random key and tempo."""
    score = _Score(params, rng)
    n_lines = int(rng.integers(0, params.max_melody_lines + 1))
    if n_lines == 0 and params.max_melody_lines > 0 and rng.random() < 0.7:
        n_lines = 1
    for line in range(n_lines):
        score.add_melody(line)
    score.add_accompaniment(dense=n_lines == 0)
    if not score.onsets:  # everything rested: play the tonic chord once
        for c in score.chord_tones(0)[:3]:
            score.add(0.0, score.midi(28 + c), score.velocity(0.0), score.held(0.0, score.bar))
    return score


# ----------------------------------------------------------------------------------------------------
# Sound
# ----------------------------------------------------------------------------------------------------

def _damped_sines(rates: np.ndarray, freqs: np.ndarray, amps: np.ndarray, phases: np.ndarray, length: int,
                  sample_rate: int) -> np.ndarray:
    """sum_k amps_k exp(-rates_k t) sin(2 pi freqs_k t + phases_k) over `length` samples, via matmuls."""
    n_blocks = -(-length // _BLOCK)
    s = -rates + 2j * math.pi * freqs  # (P,)
    inner = np.exp(np.arange(_BLOCK)[:, None] / sample_rate * s[None, :]).T  # (P, BLOCK)
    outer = np.exp(np.arange(n_blocks)[:, None] * (_BLOCK / sample_rate) * s[None, :])  # (NB, P)
    outer *= amps * np.exp(1j * phases)
    # Im(outer @ inner) = Re(outer) @ Im(inner) + Im(outer) @ Re(inner), as one real matmul.
    lhs = np.concatenate([outer.real, outer.imag], axis=1)  # (NB, 2P)
    rhs = np.concatenate([inner.imag, inner.real], axis=0)  # (2P, BLOCK)
    y = np.empty((n_blocks, _BLOCK))
    rows = max(_MAX_MATMUL_MACS // rhs.size, 1)
    for i in range(0, n_blocks, rows):
        np.matmul(lhs[i:i + rows], rhs, out=y[i:i + rows])
    return y.reshape(-1)[:length]


def _render_notes(score: _Score, params: PianoParams, rng: np.random.Generator, n_samples: int) -> np.ndarray:
    """Render every note of the score into a float64 buffer of n_samples."""
    sr = params.sample_rate
    out = np.zeros(n_samples, dtype=np.float64)
    onsets, pitches, velocities, helds = score.arrays()
    n = np.arange(1, params.max_partials + 1, dtype=np.float64)
    span = max(params.pitch_max - params.pitch_min, 1)
    log_b = (math.log(params.inharmonicity_min), math.log(params.inharmonicity_max))
    attack = max(int(round(params.attack_ms * sr / 1000.0)), 1)
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(attack) + 0.5) / attack)
    fade = int(0.01 * sr)
    hammer_len = max(int(0.008 * sr), 2)
    hammer_t = np.arange(hammer_len) / sr
    max_len = int(params.max_note_seconds * sr)
    for onset, m, vel, held in zip(onsets, pitches, velocities, helds, strict=True):
        start = int(round(onset * sr))
        if start >= n_samples:
            continue
        f0 = 440.0 * 2.0 ** ((m - 69) / 12.0)
        frac = min(max((m - params.pitch_min) / span, 0.0), 1.0)
        b = math.exp(log_b[0] + (log_b[1] - log_b[0]) * frac) * rng.uniform(0.85, 1.15)
        freqs = n * f0 * np.sqrt(1.0 + b * n * n)
        keep = freqs < 0.95 * sr / 2
        if not keep.any():
            continue
        nk, fk = n[keep], freqs[keep]
        x0 = rng.uniform(1 / 9, 1 / 7)  # hammer striking position along the string
        amps = nk ** -(1.8 - 1.2 * vel) * np.exp(-fk / (2000.0 + 10000.0 * vel * vel))
        amps *= 0.15 + np.abs(np.sin(np.pi * nk * x0))
        amps *= vel * vel / math.sqrt(float(np.sum(amps * amps)))
        t60 = min(max(14.0 * 2.0 ** (-(m - 21) / 16.0), 0.3), 14.0)
        rates = _LN1000 / t60 * (1.0 + 0.3 * (nk - 1.0)) + (fk / 3000.0) ** 2
        detune = 2.0 ** (rng.uniform(-1.0, 1.0) * params.unison_detune_cents / 1200.0)
        rates2 = rates * rng.uniform(0.7, 1.3)
        all_rates = np.concatenate([rates, rates2])
        all_freqs = np.concatenate([fk, fk * detune])
        all_amps = np.concatenate([amps, amps]) / math.sqrt(2.0)
        phases = rng.uniform(0.0, 2.0 * math.pi, all_rates.size)
        ring = _LN1000 / float(all_rates.min())
        release = max(params.release_ms / 1000.0, 1e-4) * min(max(2.0 ** (-(m - 60) / 24.0), 0.3), 3.0)
        length = min(int(min(held + release, ring) * sr), max_len, n_samples - start)
        if length < 2:
            continue
        y = _damped_sines(all_rates, all_freqs, all_amps, phases, length, sr)
        a = min(attack, length)
        y[:a] *= ramp[:a]
        off = int(held * sr)
        if off < length:
            y[off:] *= np.exp(-_LN1000 / release * np.arange(length - off) / sr)
        f = min(fade, length // 2)
        y[length - f:] *= np.linspace(1.0, 0.0, f)
        # Hammer thump: short decaying noise, low-passed more for soft notes.
        width = int(round(2 + 10 * (1.0 - vel)))
        noise = np.convolve(rng.standard_normal(hammer_len + width - 1), np.hanning(width + 2)[1:-1], "valid")
        noise *= np.exp(-hammer_t / 0.0015) / max(float(np.std(noise)), 1e-12)
        h = min(hammer_len, length)
        y[:h] += params.hammer_noise * vel * vel * noise[:h]
        out[start:start + length] += y
    return out


def _add_room(x: np.ndarray, params: PianoParams, rng: np.random.Generator) -> np.ndarray:
    """Add a small room: x + mix * (x convolved with an exponentially decaying noise tail), same length."""
    sr = params.sample_rate
    mix = rng.uniform(0.0, params.reverb_mix) if params.reverb_mix > 0 else 0.0
    rt60 = rng.uniform(min(0.3, params.reverb_seconds), params.reverb_seconds)
    predelay = int(rng.uniform(0.005, 0.02) * sr)
    length = int(rt60 * sr)
    if mix <= 0 or length < 2 or x.size == 0:
        return x
    t = np.arange(length) / sr
    noise = rng.standard_normal(length + 7)
    low = np.convolve(noise, np.full(8, 1 / 8), "valid")  # darker late tail, brighter early part
    ir = low * np.exp(-_LN1000 * t / rt60) + 0.5 * noise[:length] * np.exp(-_LN1000 * t / (0.4 * rt60))
    ir[: int(0.005 * sr)] *= np.linspace(0.0, 1.0, int(0.005 * sr))
    ir = np.concatenate([np.zeros(predelay), ir / math.sqrt(float(np.sum(ir * ir)))])
    n_fft = 1 << (x.size + ir.size - 2).bit_length()
    wet = np.fft.irfft(np.fft.rfft(x, n_fft) * np.fft.rfft(ir, n_fft), n_fft)[: x.size]
    return x + mix * wet


def synthesize_piece(params: PianoParams, rng: np.random.Generator) -> np.ndarray:
    """One piece of round(clip_seconds * sample_rate) float32 samples, peak-normalised to params.peak."""
    n_samples = int(round(params.clip_seconds * params.sample_rate))
    score = _compose(params, rng)
    out = _add_room(_render_notes(score, params, rng, n_samples), params, rng)
    fade = min(int(0.01 * params.sample_rate), n_samples)
    if fade:
        out[n_samples - fade:] *= np.linspace(1.0, 0.0, fade)
    peak = float(np.max(np.abs(out))) if n_samples else 0.0
    if peak > 0:
        out *= params.peak / peak
    return out.astype(np.float32)


def generate_clips(params: PianoParams, total_seconds: float, seed: int) -> list[np.ndarray]:
    """ceil(total_seconds / clip_seconds) pieces; piece j is drawn from np.random.default_rng([seed, j])."""
    if total_seconds < 0:
        raise ValueError("total_seconds must be >= 0")
    count = math.ceil(total_seconds / params.clip_seconds - 1e-9)
    return [synthesize_piece(params, np.random.default_rng([seed, j])) for j in range(count)]
