"""The `audiolab apply` and `audiolab export` subcommands (heavy imports wait until one runs)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def _load(args: argparse.Namespace) -> Any:
    from audiolab.common.numbering import find_run_dir
    from audiolab.inference.run_model import load_run_model

    run_dir = find_run_dir(args.run, Path(args.outputs))
    return load_run_model(run_dir, args.checkpoint, args.device, trust=args.trust_checkpoint)


def _apply(args: argparse.Namespace) -> int:
    from audiolab.inference.apply import apply_run

    if args.latents and args.decode:
        print("audiolab apply: --latents and --decode go one at a time", file=sys.stderr)
        return 2
    mode = "latents" if args.latents else "decode" if args.decode else "audio"
    try:
        run = _load(args)
        started = time.perf_counter()
        outcomes = apply_run(run, [Path(p) for p in args.inputs], Path(args.out), mode, args.batch,
                             progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as err:
        print(f"audiolab apply: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    if not outcomes:
        print(f"audiolab apply: no {'.npy' if mode == 'decode' else 'audio'} files in {' '.join(args.inputs)}",
              file=sys.stderr)
        return 2
    failed = [o for o in outcomes if o.error]
    for o in outcomes:
        if o.error:
            print(f"  FAILED {o.source}: {o.error}", file=sys.stderr)
        else:
            print(f"  {o.source} -> {o.output}")
    seconds = sum(o.seconds for o in outcomes)
    print(f"audiolab apply: {run.run_dir.name} ({run.checkpoint}.pt, step {run.step}, {run.weights} weights, "
          f"{run.device}) on {len(outcomes) - len(failed)} of {len(outcomes)} files: {seconds:.1f} s of audio in "
          f"{elapsed:.1f} s ({seconds / max(elapsed, 1e-9):.1f} audio s/s)")
    return 1 if failed else 0


def _export(args: argparse.Namespace) -> int:
    from audiolab.inference.convert import ExportError
    from audiolab.inference.export import export_run

    try:
        run = _load(args)
        suffix = ".onnx" if args.format == "onnx" else ".ts"
        default = run.run_dir / "export" / f"{run.run_dir.name}{'_stream' if args.streaming else ''}{suffix}"
        out = Path(args.out) if args.out else default
        path, meta = export_run(run, out, args.format, args.streaming, args.block)
    except ExportError as err:
        print(f"audiolab export: cannot export {args.run}: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"audiolab export: {err}", file=sys.stderr)
        return 2
    print(f"{path}  ({path.with_suffix('.json').name} beside it)")
    if meta["streaming"]:
        print(f"  streaming: blocks of {meta['block_size']} samples at {meta['sample_rate']} Hz, latency "
              f"{meta['latency_samples']} samples ({meta['latency_ms']} ms)")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="outputNN, NN or a path to a run directory")
    parser.add_argument("--outputs", default="outputs", help="where numbered runs live (default: outputs)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="best (default: the validated weights, the EMA's where the run kept one) or last")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the run's trainer.device, "
                                                        "auto = CUDA when present)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow a checkpoint that needs full unpickling (runs code in it): only your own files")


def add_commands(commands: Any) -> None:
    """Add `apply` and `export` to the `audiolab` command's subparsers."""
    apply = commands.add_parser(
        "apply", help="run a trained model over audio files or folders (restore, reconstruct, encode, decode)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run outputNN's model over each file (and every audio file under each folder) and write the\n"
                    "result under OUTDIR with the same relative name, rate, channels and length. Files go through\n"
                    "in overlapping windows of the run's segment length, cross-faded, so any length fits in memory.\n"
                    "A file that fails is named with its reason and the others go on (exit status 1).",
        epilog="examples:\n  audiolab apply output27 take1.wav takes/ -o restored/\n"
               "  audiolab apply output31 song.flac -o z/ --latents      # autoencoders: latents as .npy\n"
               "  audiolab apply output31 z/ -o back/ --decode")
    _common(apply)
    apply.add_argument("inputs", nargs="+", help="audio files or folders (with --decode: .npy latents or folders)")
    apply.add_argument("-o", "--out", required=True, help="output folder")
    apply.add_argument("--batch", type=int, default=8, help="windows per batch on the device (default: 8)")
    apply.add_argument("--latents", action="store_true", help="autoencoders: write the latent sequence (.npy)")
    apply.add_argument("--decode", action="store_true", help="autoencoders: turn .npy latents back into audio")
    apply.add_argument("--no-progress", action="store_true", help="no progress bar")
    apply.set_defaults(func=_apply)

    export = commands.add_parser(
        "export", help="write a run's model as a self-contained TorchScript (offline or streaming) or ONNX file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write outputNN's model as a file that runs without audiolab, plus a JSON beside it of what it\n"
                    "expects (sample rate, channels, block size, latency in samples). --streaming keeps each\n"
                    "convolution's past between calls, so blocks fed one by one give the offline output, latency\n"
                    "samples later; models that cannot stream exactly are refused with the reason.",
        epilog="examples:\n  audiolab export output27                               # TorchScript, whole files\n"
               "  audiolab export output27 --streaming --block 256\n"
               "  audiolab export output27 --format onnx")
    _common(export)
    export.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript")
    export.add_argument("--streaming", action="store_true", help="TorchScript that takes blocks and keeps state")
    export.add_argument("--block", type=int, default=None,
                        help="streaming block size in samples: divides the model's hop or is a multiple of it "
                             "(default: the hop)")
    export.add_argument("--out", default=None, help="the file (default: <run>/export/<run>[_stream].ts or .onnx)")
    export.set_defaults(func=_export)
