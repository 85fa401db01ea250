"""Atomic, durable file writes: readers see the old file or the new one, never half of either.

A write goes to a temporary file beside the target, is fsynced, given the mode a plain `open` would give
(mkstemp makes files 0600, which colleagues on a shared machine cannot read), renamed over the target,
and the directory is fsynced, so a power loss cannot leave a zero-length file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would create, under this process's umask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; on success it replaces `path` durably, on error it is removed."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename not in (None, name):
            raise
        raise OSError(err.errno, err.strerror, str(path)) from None  # name the file the user knows, not the tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot open or fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to `path` atomically and durably (see the module docstring)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
