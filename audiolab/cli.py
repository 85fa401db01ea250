"""The `audiolab` command: tools around runs (training itself is `python run.py`)."""

from __future__ import annotations

import argparse
import logging
import sys

from audiolab.config.schema import ConfigError


def _reproduce(args: argparse.Namespace) -> int:
    from audiolab.runs.session import RunFailed, RunInterrupted, reproduce

    try:
        result = reproduce(args.run, args.overrides, outputs=args.outputs)
    except (ConfigError, FileNotFoundError) as err:
        print(f"audiolab reproduce: {err}", file=sys.stderr)
        return 2
    except RunFailed:
        return 1
    except RunInterrupted as err:
        return 128 + err.signum
    return 0 if result.status == "completed" else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `audiolab` command."""
    parser = argparse.ArgumentParser(prog="audiolab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    rep = commands.add_parser("reproduce", help="re-run a numbered run from its saved, resolved config")
    rep.add_argument("run", help="outputNN, NN, or a path to a run directory")
    rep.add_argument("overrides", nargs="*", help="key=value overrides applied to the saved config")
    rep.add_argument("--outputs", default="outputs", help="where numbered runs live (default: outputs)")
    rep.set_defaults(func=_reproduce)
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
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
