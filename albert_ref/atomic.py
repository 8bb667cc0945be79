"""Write a file (or a directory) so that readers see either nothing or the whole of it."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from albert_ref.errors import InputError, OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_path(path, directory: bool = False) -> Path:
    """Refuse, before any work is done, an output that cannot be written: one whose parent
    directory does not exist, or (for a file) an existing directory."""
    path = Path(path)
    if not directory and path.is_dir():
        raise OutputError(f"{path} is a directory; name a file to write")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: {path.parent} is not an existing directory")
    return path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it is fsynced and renamed to
    `path` with ordinary permissions, on any failure (KeyboardInterrupt included) deleted."""
    path = check_output_path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_output(path, mode="wb"):
    """Like atomic_path, but yield an open file object."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh


@contextlib.contextmanager
def atomic_directory(path):
    """Like atomic_path, for a directory: yield a temporary directory beside `path`, renamed
    to it with ordinary permissions on success (an existing empty directory is replaced),
    deleted with its contents on any failure."""
    path = check_output_path(path, directory=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def exclusive_folder(folder, lock_name: str, cannot_write: str, in_use: str):
    """Create `folder` and hold a lock on folder/lock_name for the block, so that a second
    writer is refused (InputError `in_use`) rather than let two interleave; `cannot_write`
    begins the error when the folder or its lock cannot be made."""
    folder = Path(folder)
    try:
        folder.mkdir(exist_ok=True)
        lock = open(folder / lock_name, "a")
    except OSError as exc:
        raise InputError(f"{cannot_write}: {exc.strerror or exc}") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(in_use) from None
        yield
