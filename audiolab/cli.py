"""The `audiolab` command: tools around runs (training itself is `python run.py`)."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from audiolab.config.schema import ConfigError
from audiolab.inference.commands import add_commands as add_inference_commands


def _reproduce(args: argparse.Namespace) -> int:
    from audiolab.runs.session import RunFailed, RunInterrupted, reproduce

    if (args.rtol is not None or args.steps is not None) and not args.check:
        print("audiolab reproduce: --rtol and --steps go with --check", file=sys.stderr)
        return 2
    try:
        done = reproduce(args.run, args.overrides, outputs=args.outputs, check=args.check, rtol=args.rtol,
                         steps=args.steps)
    except (ConfigError, FileNotFoundError) as err:
        print(f"audiolab reproduce: {err}", file=sys.stderr)
        return 2
    except RunFailed:
        return 1
    except RunInterrupted as err:
        return 128 + err.signum
    for note in done.notes:
        print(f"reproduce --check: note: {note}")
    if done.comparison is not None:
        print(f"reproduce --check: {done.comparison.verdict_line()}")
    return 0 if done.ok else 1


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _add_reproduce(commands: Any) -> None:
    rep = commands.add_parser(
        "reproduce", help="re-run a numbered run from its saved, resolved config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Re-run outputNN from its saved config_resolved.yaml in a new numbered directory\n"
                    "(its run.json: \"reproduces\": NN). Warns first when the code here is not the run's:\n"
                    "another commit, other uncommitted changes than its code.patch, other untracked files.",
        epilog="--check compares the re-run's metrics.jsonl with the original's, step by step, perf/* aside, and\n"
               "prints one verdict line: MATCH (bitwise) or DIFFERS (first differing step and key, both values,\n"
               "and the largest relative difference per key). Exit status 0 on MATCH, 1 on DIFFERS. The verdict\n"
               "is recorded in the re-run's run.json under \"check\".\n"
               "CUDA kernels (and bf16 autocast) are not bitwise deterministic: for runs on CUDA pass a\n"
               "tolerance, e.g. --rtol 1e-4. On CPU runs reproduce bitwise.\n"
               "--steps N stops the re-run cleanly after step N (config unchanged, so the learning-rate\n"
               "schedule is the original's; status interrupted, last.pt saved, run.json \"stopped\") and\n"
               "compares steps <= N only.\n\n"
               "examples:\n  audiolab reproduce output12 --check\n"
               "  audiolab reproduce output12 --check --rtol 1e-4 --steps 200")
    rep.add_argument("run", help="outputNN, NN, or a path to a run directory")
    rep.add_argument("overrides", nargs="*", help="key=value overrides applied to the saved config")
    rep.add_argument("--outputs", default="outputs", help="where numbered runs live (default: outputs)")
    rep.add_argument("--check", action="store_true",
                     help="after the re-run, compare its metrics.jsonl with the original's: MATCH (exit 0) or "
                          "DIFFERS (exit 1)")
    rep.add_argument("--rtol", type=_non_negative_float, default=None, metavar="R",
                     help="with --check: values within relative tolerance R count as equal (default: bitwise; "
                          "on CUDA, which is not bitwise deterministic, use e.g. 1e-4)")
    rep.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                     help="with --check: stop the re-run cleanly after step N (config unchanged) and compare "
                          "steps <= N only")
    rep.set_defaults(func=_reproduce)


def _open_study(args: argparse.Namespace) -> tuple[Any, str] | None:
    """The study named on the command line and its storage URL; None (after saying why) when there is none."""
    import optuna

    from audiolab.sweep.storage import JOURNAL_PREFIX, display_url, storage_url
    from audiolab.sweep.study import open_study

    try:
        url = storage_url(args.storage, args.outputs)
    except ValueError as err:
        print(f"audiolab sweep: {err}", file=sys.stderr)
        return None
    for prefix in (JOURNAL_PREFIX, "sqlite:///"):
        path = url[len(prefix):]
        # Opening a file storage creates it: a typo in --outputs must not leave an empty optuna.db behind.
        if url.startswith(prefix) and path != ":memory:" and not Path(path).exists():
            print(f"audiolab sweep: no study {args.study!r}: no storage at {path} (studies there: none; "
                  "pass --storage or --outputs)", file=sys.stderr)
            return None
    try:
        with warnings.catch_warnings():  # heartbeat options are "experimental" in Optuna: noise for a reader
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return open_study(url, args.study), display_url(url)
    except KeyError as err:
        print(f"audiolab sweep: {err.args[0]}", file=sys.stderr)
        return None


def _runs(args: argparse.Namespace) -> int:
    from audiolab.runs import table

    outputs = Path(args.outputs)
    if not outputs.is_dir():
        print(f"audiolab runs: no outputs directory at {outputs} (--outputs names another)", file=sys.stderr)
        return 2
    try:
        where = [table.Condition.parse(text) for text in args.where]
    except ValueError as err:
        print(f"audiolab runs: {err}", file=sys.stderr)
        return 2
    rows = table.select(table.read_rows(outputs), sweep=args.sweep, status=args.status, where=where)
    rows = table.sort_rows(rows, args.sort)
    if args.format == "json":
        print(table.to_json(rows))
    elif args.format == "csv":
        print(table.to_csv(rows), end="")
    elif not rows:
        print(f"audiolab runs: no run under {outputs} matches", file=sys.stderr)
        return 1
    else:
        import shutil

        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 200
        print((table.render_breakdown if args.breakdown else table.render)(rows, width=width), end="")
    return 0


def _add_runs(commands: Any) -> None:
    runs = commands.add_parser("runs", help="list the numbered runs: status, overrides, best val/spec_loss, ...",
                               description="Every numbered run under --outputs, one row each, from its run.json.")
    runs.add_argument("--outputs", default="outputs", help="where numbered runs live (default: outputs)")
    runs.add_argument("--sweep", help="only the runs of one grid or sweep: sweepNN, or an Optuna study's name")
    runs.add_argument("--status", action="append", default=[],
                      choices=("running", "completed", "failed", "interrupted", "pruned", "dead"),
                      help="only runs with this status (repeatable)")
    runs.add_argument("--where", action="append", default=[], metavar="KEY<OP>VALUE",
                      help="keep runs whose config key (optim.lr) or column (best, steps, status, ...) passes, "
                           "e.g. --where 'optim.lr>1e-3'; OP is one of = != < <= > >= (repeatable: all must hold)")
    runs.add_argument("--sort", choices=("number", "best", "improvement", "wall", "started"), default="number",
                      help="row order (default: number; best, wall: lowest first; improvement: highest first)")
    runs.add_argument("--breakdown", action="store_true",
                      help="where the error is left: val/improvement at the best step per semitone shift and band")
    fmt = runs.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="format", action="store_const", const="json", help="print JSON instead")
    fmt.add_argument("--csv", dest="format", action="store_const", const="csv", help="print CSV instead")
    runs.set_defaults(func=_runs, format="table")


def _sweep_show(args: argparse.Namespace) -> int:
    from audiolab.sweep.review import baseline_lines, format_table, state_counts, study_directions, trial_rows

    opened = _open_study(args)
    if opened is None:
        return 2
    study, shown = opened
    rows = trial_rows(study)
    counts = ", ".join(f"{n} {name.lower()}" for name, n in state_counts(rows).items()) or "no trials"
    print(f"study {study.study_name} ({shown}): {len(rows)} trials: {counts}")
    for line in baseline_lines(rows):  # the do-nothing baseline, and the trials that do worse than it
        print(line)
    print(format_table(rows, sort=args.sort, directions=study_directions(study)))
    return 0


def _sweep_report(args: argparse.Namespace) -> int:
    from audiolab.sweep.review import write_report

    opened = _open_study(args)
    if opened is None:
        return 2
    study, shown = opened
    out = Path(args.out) if args.out else Path(args.outputs) / "multirun" / f"{args.study}_report.html"
    print(write_report(study, out, top_k=args.top_k, storage=shown))
    return 0


def _data_prepare(args: argparse.Namespace) -> int:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from audiolab.config import register_configs
    from audiolab.config.resolvers import register_resolvers
    from audiolab.data.folder import DataError, Preprocessing, format_summary, prepare_folder, split_clips

    register_configs()
    register_resolvers()
    # The same composition as `python run.py data=folder data.path=DIR ...`, so the cache is the one training uses.
    overrides = ["data=folder", f"data.path={Path(args.path).absolute()}", *args.overrides]
    try:
        with initialize_config_dir(config_dir=str(Path(args.config_dir).absolute()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        data = OmegaConf.to_container(cfg.data, resolve=True)
    except HydraException as err:
        print(f"audiolab data prepare: config error: {err}", file=sys.stderr)
        return 2
    params = Preprocessing(data["sample_rate"], data["channels"], data["dtype"], data["normalize"], data["peak_db"],
                           data["loudness_lufs"])
    try:
        prepared = prepare_folder(data["path"], data["cache_dir"], params, data["val_path"],
                                  args.workers if args.workers is not None else data["prepare_workers"],
                                  data["extensions"], progress=data["progress"])
    except DataError as err:
        print(f"audiolab data prepare: {err}", file=sys.stderr)
        return 2
    split = split_clips(prepared.cache, data["segment"], data["val_fraction"])
    print(format_summary(prepared, split, data["segment"]))
    if not split.train or not split.val:
        print(f"audiolab data prepare: no usable {'training' if not split.train else 'validation'} audio",
              file=sys.stderr)
        return 1
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from audiolab.common.numbering import find_run_dir
    from audiolab.config import register_configs
    from audiolab.config.resolvers import register_resolvers
    from audiolab.metrics.clap import ClapCheckpointError
    from audiolab.runs.evaluation import evaluate_paths, evaluate_run

    register_configs()
    register_resolvers()
    reference = Path(args.reference) if args.reference else None
    candidates = Path(args.candidates) if args.candidates else None
    if args.run is not None and "=" in args.run:  # no run given: the first override landed in `run`
        args.overrides, args.run = [args.run, *args.overrides], None
    try:
        if args.run is not None:
            run_dir = find_run_dir(args.run, Path(args.outputs))
            trust = ["trainer.trust_checkpoint=true"] if args.trust_checkpoint else []
            results = evaluate_run(run_dir, [*args.overrides, *trust], reference, candidates, args.checkpoint)
            what = f"{run_dir.name} ({args.checkpoint}.pt)"
        elif reference is not None and candidates is not None:
            results = evaluate_paths(reference, candidates, args.overrides, Path(args.config_dir))
            what = f"{candidates} against {reference}"
        else:
            print("audiolab evaluate: give a run (outputNN), or both --reference DIR and --candidates DIR",
                  file=sys.stderr)
            return 2
    except (ConfigError, ClapCheckpointError, FileNotFoundError, ValueError) as err:
        print(f"audiolab evaluate: {err}", file=sys.stderr)
        return 2
    if results is None:
        return 1  # the embedder could not be built (the reason is logged)
    print(f"{what}:")
    for name, value in results.items():
        print(f"  {name:<32} {value:.6g}")
    return 0


def _add_evaluate(commands: Any) -> None:
    evaluate = commands.add_parser("evaluate", help="FAD, KID and diversity on embeddings for a run, or two folders")
    evaluate.add_argument("run", nargs="?", default=None, help="outputNN, NN or a run directory (optional)")
    evaluate.add_argument("overrides", nargs="*", help="metrics.* overrides, e.g. metrics.embedder=logmel")
    evaluate.add_argument("--reference", help="a folder of reference audio (default: the run's validation targets)")
    evaluate.add_argument("--candidates", help="a folder of audio to judge (default: the run's outputs)")
    evaluate.add_argument("--checkpoint", default="best", choices=["best", "last"],
                          help="which weights (default: best)")
    evaluate.add_argument("--trust-checkpoint", action="store_true",
                          help="load a checkpoint that needs full unpickling (runs code in it): only your own files")
    evaluate.add_argument("--outputs", default="outputs", help="where numbered runs live (default: outputs)")
    evaluate.add_argument("--config-dir", default=str(Path(__file__).resolve().parents[1] / "conf"),
                          help="Hydra config directory for folder-only evaluation (default: the repository's conf/)")
    evaluate.set_defaults(func=_evaluate)


def _compare(args: argparse.Namespace) -> int:
    from audiolab.common.numbering import find_run_dir
    from audiolab.runs.listening import default_page_path, write_compare_page

    try:
        run_dirs = [find_run_dir(ref, Path(args.outputs)) for ref in args.runs]
        out = Path(args.out) if args.out else default_page_path(run_dirs)
        print(write_compare_page(run_dirs, out))
    except (FileNotFoundError, ValueError) as err:
        print(f"audiolab compare: {err}", file=sys.stderr)
        return 2
    return 0


def _add_compare(commands: Any) -> None:
    compare = commands.add_parser(
        "compare", help="one self-contained HTML page setting runs side by side: differing config, curves, audio",
        description="Write one HTML page (everything embedded: it opens offline) with the runs' best val/spec_loss,\n"
                    "the config keys that differ between them, their validation curves on one plot, and for each\n"
                    "fixed validation clip the input, every run's output (from its best step) and the target, with\n"
                    "players and spectrograms on one shared colour scale. Prints the page's path.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  audiolab compare 23 27\n  audiolab compare output23 output27 output31 --out cmp.html")
    compare.add_argument("runs", nargs="+", help="runs: NN, outputNN or paths to run directories")
    compare.add_argument("--outputs", default="outputs", help="where numbered runs live (default: outputs)")
    compare.add_argument("--out", default=None,
                         help="the HTML file (default: <outputs>/compare/compare_<runs>.html, beside the first run)")
    compare.set_defaults(func=_compare)


def _add_data(commands: Any) -> None:
    data = commands.add_parser("data", help="prepare a folder dataset's cache ahead of training")
    actions = data.add_subparsers(dest="data_command", required=True, metavar="{prepare}")
    prepare = actions.add_parser("prepare", help="build (or check) the cache of a folder and summarise it: files "
                                 "used, durations, and every skipped file with its reason")
    prepare.add_argument("path", help="the folder of audio files (data.path)")
    prepare.add_argument("overrides", nargs="*", help="data.* overrides, as for run.py (e.g. data.sample_rate=48000)")
    prepare.add_argument("--workers", type=int, default=None, help="decoding processes (default: data.prepare_workers)")
    prepare.add_argument("--config-dir", default=str(Path(__file__).resolve().parents[1] / "conf"),
                         help="Hydra config directory (default: the repository's conf/)")
    prepare.set_defaults(func=_data_prepare)


def _add_sweep(commands: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("study", help="name of the Optuna study (hydra.sweeper.study_name)")
    common.add_argument("--storage", default=None,
                        help="storage URL: journal:PATH, sqlite:///PATH or postgresql://... "
                             "(default: sqlite:///<outputs>/optuna.db)")
    common.add_argument("--outputs", default="outputs", help="where numbered runs live (default: outputs)")
    sweep = commands.add_parser("sweep", help="review an Optuna study: its trials as a table or an HTML report")
    actions = sweep.add_subparsers(dest="sweep_command", required=True, metavar="{show,report}")
    show = actions.add_parser("show", parents=[common], help="print the study's trials as a table")
    show.add_argument("--sort", choices=("value", "number"), default="value",
                      help="best first (value, the default) or in trial order (number)")
    show.set_defaults(func=_sweep_show)
    report = actions.add_parser("report", parents=[common],
                                help="write an offline HTML report with Optuna's figures and the best runs")
    report.add_argument("--out", default=None, help="the HTML file (default: <outputs>/multirun/<study>_report.html)")
    report.add_argument("--top-k", type=int, default=5, help="how many best trials to show in detail (default: 5)")
    report.set_defaults(func=_sweep_report)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `audiolab` command."""
    parser = argparse.ArgumentParser(prog="audiolab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_runs(commands)
    _add_reproduce(commands)
    _add_sweep(commands)
    _add_data(commands)
    _add_evaluate(commands)
    _add_compare(commands)
    add_inference_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `audiolab` console script."""
    parser = build_parser()
    # Overrides may come after options (`reproduce output12 --outputs x a=1`): collect the leftovers.
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-")]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    # The console gets what run.py's console gets (conf/hydra/job_logging/audiolab.yaml): INFO and up, message
    # only; the run's train.log, written by the session, keeps the per-step DEBUG lines.
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[console])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
