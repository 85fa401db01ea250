"""What code a run was made with: the git commit, `code.patch` for a dirty tree, and untracked file names.

At the start of every new run `snapshot_code` writes `git diff HEAD --binary` to `<run_dir>/code.patch`
when there is one (a clean tree writes nothing) and returns the `git` entry of run.json:

    {"commit": "<sha>", "dirty": true, "patch": "code.patch", "patch_sha256": "<sha256 of the patch>",
     "untracked": ["audiolab/new_model.py"]}

`untracked` names the files git does not track under audiolab/, conf/ and experiments/ (their content is
not saved). `code_drift` tells `audiolab reproduce` whether today's code is the run's, and how to get it
back. Git runs in the directory of this package unless a repository is given; every call is bounded by
a timeout, and outside git (or without git) nothing is written and the commit is None.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PATCH_NAME = "code.patch"
WATCHED = ("audiolab", "conf", "experiments")  # where untracked files are listed (relative to the repo root)
GIT_TIMEOUT = 10  # seconds per git call


def _here() -> Path:
    return Path(__file__).resolve().parent


def _git(args: list[str], cwd: Path) -> bytes:
    """Stdout of `git ARGS` in cwd; raises OSError / SubprocessError on any failure."""
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=GIT_TIMEOUT, check=True).stdout


@dataclass
class CodeState:
    """The code of a git work tree right now."""

    root: Path
    commit: str
    dirty: bool  # tracked files differ from HEAD (untracked files aside)
    diff: bytes  # `git diff HEAD --binary`
    untracked: list[str]  # untracked, not ignored, under WATCHED

    @property
    def patch_sha256(self) -> str | None:
        """sha256 of the diff; None for a clean tree."""
        return hashlib.sha256(self.diff).hexdigest() if self.diff else None


def code_state(repo: Path | None = None) -> CodeState | None:
    """The state of the work tree holding `repo` (default: this package's); None outside git or without git."""
    where = Path(repo) if repo is not None else _here()
    try:
        root = Path(_git(["rev-parse", "--show-toplevel"], where).decode().strip())
        commit = _git(["rev-parse", "HEAD"], root).decode().strip()
        dirty = bool(_git(["status", "--porcelain", "--untracked-files=no"], root).strip())
        diff = _git(["diff", "HEAD", "--binary"], root)
        listed = _git(["ls-files", "--others", "--exclude-standard", "-z", "--", *WATCHED], root)
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return None
    untracked = sorted(name for name in listed.decode(errors="surrogateescape").split("\0") if name)
    return CodeState(root, commit, dirty, diff, untracked)


def git_state(repo: Path | None = None) -> dict[str, Any]:
    """The current git commit and whether the work tree has uncommitted changes (None outside git)."""
    where = Path(repo) if repo is not None else _here()
    try:
        commit = _git(["rev-parse", "HEAD"], where).decode().strip()
        dirty = bool(_git(["status", "--porcelain", "--untracked-files=no"], where).strip())
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def snapshot_code(run_dir: Path, repo: Path | None = None) -> dict[str, Any]:
    """Write `run_dir/code.patch` when the tree is dirty, and return run.json's `git` entry."""
    state = code_state(repo)
    if state is None:
        return {"commit": None, "dirty": None}
    entry: dict[str, Any] = {"commit": state.commit, "dirty": state.dirty, "patch": None, "patch_sha256": None,
                             "untracked": state.untracked}
    if state.diff:
        (Path(run_dir) / PATCH_NAME).write_bytes(state.diff)
        entry.update(patch=PATCH_NAME, patch_sha256=state.patch_sha256)
    return entry


def code_drift(recorded: dict[str, Any], run_dir: Path, repo: Path | None = None) -> str | None:
    """How today's code differs from what the run in `run_dir` recorded (its run.json `git`), or None.

    The message names what differs (commit, uncommitted changes, untracked files) and ends with the
    commands that bring back the run's code.
    """
    run_dir, name = Path(run_dir), Path(run_dir).name
    commit = recorded.get("commit")
    now = code_state(repo)
    if commit is None:
        return None if now is None else f"{name} recorded no git commit (made outside git?): cannot tell " \
                                        "whether the code here is the code it was made with"
    if now is None:
        return f"the code here is not in a git repository: cannot tell whether it is {name}'s " \
               f"(commit {commit[:12]})"
    found = []
    if now.commit != commit:
        found.append(f"commit: {name} was made at {commit[:12]}, the code here is at {now.commit[:12]}")
    if "patch_sha256" in recorded:  # run.json written since code.patch exists
        theirs, ours = recorded.get("patch_sha256"), now.patch_sha256
        if theirs != ours:
            found.append("uncommitted changes: " + (
                f"the code here has uncommitted changes, {name} had none" if theirs is None else
                f"{name} had uncommitted changes ({PATCH_NAME}), the code here has none" if ours is None else
                f"the uncommitted changes here are not {name}'s ({PATCH_NAME})"))
    elif recorded.get("dirty"):
        found.append(f"uncommitted changes: {name} was made with uncommitted changes that were not saved "
                     "(it predates code.patch)")
    elif now.dirty:
        found.append(f"uncommitted changes: the code here has uncommitted changes, {name} had none")
    if "untracked" in recorded and set(recorded["untracked"]) != set(now.untracked):
        only_theirs = sorted(set(recorded["untracked"]) - set(now.untracked))
        only_ours = sorted(set(now.untracked) - set(recorded["untracked"]))
        parts = ([f"only {name} had {_names(only_theirs)}"] if only_theirs else []) + \
                ([f"only here: {_names(only_ours)}"] if only_ours else [])
        found.append(f"untracked files ({', '.join(WATCHED)}): {'; '.join(parts)}")
    if not found:
        return None
    steps = ["git stash", f"git checkout {commit}"]
    if recorded.get("patch"):
        steps.append(f"git apply {run_dir / recorded['patch']}")
    found.append(f"to get {name}'s code: {'; '.join(steps)}")
    if recorded.get("untracked"):
        found.append(f"(only the names of its untracked files were saved: {_names(recorded['untracked'])})")
    return f"the code here is not the code {name} was made with; results may differ:\n  " + "\n  ".join(found)


def _names(names: list[str], limit: int = 5) -> str:
    """`a, b, c` or `a, b, c, d, e and 7 more`."""
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")
