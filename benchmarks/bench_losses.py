#!/usr/bin/env python
"""Time and peak memory of one training step per loss: MR-STFT, multi-scale mel, MR-STFT + DAC features, CDPAM.

One step = model forward (bf16 autocast on CUDA, as the training loop does), the composite loss (fp32 inputs,
as audiolab.losses.composite.WeightedLoss computes it), backward, AdamW step. Configurations: the MR-STFT loss
alone, the multi-scale mel loss alone, then MR-STFT + DACFeatureLoss with taps block1 / blocks /
residual:1,2,3,4, each with activation checkpointing on and off, then CDPAM (audiolab.losses.cdpam.CdpamLoss, the
pretrained weights shipped in the `cdpam` package, 44.1 kHz audio resampled to its 22.05 kHz) alone and with
MR-STFT, each with checkpointing on and off. Each configuration runs in a fresh subprocess so no allocator cache
or peak carries over between them. `--only cdpam` (or any of mrstft, mel, dac, cdpam, comma-separated) runs those
groups only; the MR-STFT row, the ratios' reference, always runs first.

Memory: on CUDA torch.cuda.max_memory_allocated over the steps (peak), and its growth over what was allocated
after building everything (step delta). On CPU the process's peak resident set (VmHWM, reset via
/proc/self/clear_refs after building) minus the resident set after building: the step delta. The ratio column
is the step delta relative to the MR-STFT-only step (on CUDA the peak ratio is shown too).

    python benchmarks/bench_losses.py                                  # GPU: big model, 16 x 49152
    python benchmarks/bench_losses.py --batch 2 --samples 16384 --model small --device cpu
    python benchmarks/bench_losses.py --batch 2 --samples 16384 --model small --device cpu --only cdpam

Without --weights, a randomly initialised DAC with the real 44 kHz architecture (`dac.DAC()` defaults) is
used: the memory and time figures are those of the pretrained model, the loss values are not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODELS = {
    "big": {"channels": [1, 8, 64, 256, 512], "blocks": [2, 2, 3, 4], "factors": [8, 8, 4, 2]},
    "small": {"channels": [1, 16, 32, 64, 128], "blocks": [1, 1, 2, 2], "factors": [4, 4, 4, 4]},
}
MRSTFT = {"fft_sizes": [2048, 1024, 512, 256, 128], "hop_sizes": [512, 256, 128, 64, 32],
          "win_lengths": [2048, 1024, 512, 256, 128], "eps": 1e-4}
MEL = "mel_multiscale"  # not a DAC tap: the multi-scale mel loss alone, for comparison
CDPAM, MRSTFT_CDPAM = "cdpam", "mrstft+cdpam"  # nor these: CDPAM alone, and MR-STFT + CDPAM
# (taps, checkpointing, group): taps None is MR-STFT alone; groups are what --only selects.
CONFIGS: list[tuple[str | None, bool, str]] = [(None, False, "mrstft"), (MEL, False, "mel")] + [
    (taps, ckpt, "dac") for taps in ("block1", "blocks", "residual:1,2,3,4") for ckpt in (True, False)] + [
    (taps, ckpt, "cdpam") for taps in (CDPAM, MRSTFT_CDPAM) for ckpt in (False, True)]
GROUPS = ("mrstft", "mel", "dac", "cdpam")
MB = 2**20


# --- child: one configuration --------------------------------------------------------------------------


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _warm_imports() -> None:
    """Import what the first step would import lazily, in every configuration, so it is not counted as step
    memory: torch.utils.checkpoint imports torch._dynamo on first use (about 450 MB of RSS, seconds)."""
    import torch
    import torchaudio.functional  # noqa: F401

    torch.utils.checkpoint.checkpoint(torch.nn.functional.relu, torch.ones(1, requires_grad=True),
                                      use_reentrant=False).sum().backward()


def run_one(spec: dict) -> dict:
    """Build and time one configuration in this process; return its figures."""
    import torch
    from auraloss.freq import MultiResolutionSTFTLoss

    from audiolab.losses.composite import WeightedLoss
    from audiolab.models.convnext1d import ConvNeXtUNet1d

    device = torch.device(spec["device"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    _warm_imports()
    torch.manual_seed(0)
    model = ConvNeXtUNet1d(**MODELS[spec["model"]]).to(device)
    terms = {"mrstft": MultiResolutionSTFTLoss(**MRSTFT)}
    if spec["taps"] == MEL:
        from audiolab.losses.spectral import MelMultiScaleLoss

        terms = {"mel": MelMultiScaleLoss(sample_rate=44100)}
    elif spec["taps"] in (CDPAM, MRSTFT_CDPAM):
        from audiolab.losses.cdpam import CdpamLoss

        if spec["taps"] == CDPAM:
            terms = {}
        terms["cdpam"] = CdpamLoss(sample_rate=44100, checkpointing=spec["checkpointing"])
    elif spec["taps"] is not None:
        from audiolab.losses.dac_features import DACFeatureLoss

        terms["dac"] = DACFeatureLoss(spec["weights"], sample_rate=44100, taps=spec["taps"],
                                      checkpointing=spec["checkpointing"])
    loss_fn = WeightedLoss(terms, {name: 1.0 for name in terms}).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, t = spec["batch"], spec["samples"]
    g = torch.Generator().manual_seed(0)
    target = (0.3 * torch.sin(torch.linspace(0, 2000, t)).expand(b, 1, t) + 0.05 * torch.randn(b, 1, t, generator=g))
    inputs = (target + 0.05 * torch.randn(b, 1, t, generator=g)).to(device)
    target = target.to(device)
    amp = device.type == "cuda"

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = model(inputs)
        loss, _ = loss_fn(outputs, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset = _reset_peak_rss()
        base = _rss_kb("VmRSS") * 1024
    times = []
    for i in range(spec["warmup"] + spec["steps"]):
        t0 = time.perf_counter()
        value = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        note = ""
    else:
        peak = _rss_kb("VmHWM") * 1024
        note = "" if reset else "VmHWM not reset: includes import/build peaks"
    return {"time_s": sum(times) / len(times), "peak": peak, "delta": max(0, peak - base), "loss": value,
            "note": note}


# --- parent: all configurations ------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=None, help="default 16 on CUDA, 4 on CPU")
    parser.add_argument("--samples", type=int, default=None, help="samples per example; default 49152 / 16384")
    parser.add_argument("--model", choices=sorted(MODELS), default=None, help="default big on CUDA, small on CPU")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--weights", default=None, help="DAC checkpoint; default: random dac.DAC() (real shapes)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (counted in the peak)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated groups to run ({', '.join(GROUPS)}); mrstft always runs first")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        warnings.simplefilter("ignore")
        print("RESULT " + json.dumps(run_one(json.loads(args.child))), flush=True)
        return

    import torch

    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    gpu = device == "cuda"
    batch = args.batch or (16 if gpu else 4)
    samples = args.samples or (49152 if gpu else 16384)
    model = args.model or ("big" if gpu else "small")
    groups = set(GROUPS) if args.only is None else {g.strip() for g in args.only.split(",") if g.strip()}
    if groups - set(GROUPS):
        parser.error(f"--only: unknown group(s) {', '.join(sorted(groups - set(GROUPS)))}; choose from {GROUPS}")
    configs = [c for c in CONFIGS if c[2] in groups or c[2] == "mrstft"]

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if "dac" not in groups:
            source = "(no DAC configuration selected)"
        elif weights is None:
            import dac

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.manual_seed(0)
                weights = str(Path(tmp) / "random_dac_44khz.pth")
                dac.DAC().save(weights, package=False)
            source = "random dac.DAC() (44 kHz architecture defaults; real memory/time, meaningless loss values)"
        else:
            source = weights
        threads = args.threads or torch.get_num_threads()
        where = torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores, {threads} torch threads)"
        print(f"device: {where}")
        print(f"model: ConvNeXtUNet1d {model} {MODELS[model]}")
        print(f"batch {batch} x {samples} samples; {args.warmup} warm-up + {args.steps} timed steps per config")
        print(f"DAC weights: {source}")
        if "cdpam" in groups:
            from audiolab.losses.cdpam import weights_path

            print(f"CDPAM weights: {weights_path()} (pretrained, shipped in the cdpam package)")
        print("memory: " + ("torch.cuda.max_memory_allocated (peak) and its growth over the built state (step Δ)"
                            if gpu else "peak RSS (VmHWM) growth over the built state (step Δ), fresh process each"))
        print()

        # A fixed mmap threshold turns off glibc's adaptive one, so every large CPU tensor is its own mapping and
        # is returned to the OS when freed: RSS then follows live memory instead of growing with heap
        # fragmentation from step to step. (No effect on CUDA memory.)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "131072")}
        rows = []
        for taps, ckpt, _group in configs:
            spec = {"device": device, "model": model, "batch": batch, "samples": samples, "taps": taps,
                    "checkpointing": ckpt, "weights": weights, "steps": args.steps, "warmup": args.warmup,
                    "threads": args.threads}
            on = f"ckpt={'on' if ckpt else 'off'}"
            name = ("mrstft" if taps is None else MEL if taps == MEL else f"cdpam {on}" if taps == CDPAM
                    else f"mrstft + cdpam {on}" if taps == MRSTFT_CDPAM else f"mrstft + dac {taps} {on}")
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                  text=True, cwd=REPO, env=env)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
                rows.append((name, None, tail[0][:100]))
            else:
                rows.append((name, json.loads(lines[-1][len("RESULT "):]), ""))
            _print_row(rows[-1], rows[0][1], gpu, header=len(rows) == 1)


def _print_row(row: tuple, ref: dict | None, gpu: bool, header: bool) -> None:
    name, r, err = row
    if header:
        cols = f"{'configuration':<38} {'s/step':>8} {'peak MiB':>10} {'step Δ MiB':>11} {'×Δ':>6}"
        print(cols + (f" {'×peak':>6}" if gpu else "") + f" {'loss':>8}")
        print("-" * (len(cols) + (7 if gpu else 0) + 9))
    if r is None:
        print(f"{name:<38} failed: {err}")
        return
    ratio = f"{r['delta'] / ref['delta']:6.2f}" if ref and ref["delta"] else f"{'-':>6}"
    line = f"{name:<38} {r['time_s']:8.2f} {r['peak'] / MB:10.0f} {r['delta'] / MB:11.0f} {ratio}"
    if gpu:
        line += f" {r['peak'] / ref['peak']:6.2f}" if ref else f" {'-':>6}"
    print(line + f" {r['loss']:8.3f}" + (f"  ({r['note']})" if r["note"] else ""), flush=True)


if __name__ == "__main__":
    main()
