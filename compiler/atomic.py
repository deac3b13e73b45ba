"""Writing outputs so that an interrupted command never leaves a half-written file or folder.

Every file a command writes (models, IR text and its resources, tensors, reports,
tuning records) goes through `atomic_write`: the bytes go to a temporary file in
the destination's folder, are flushed to disk (fsync), and the temporary file is
renamed over the destination (`os.replace`, atomic on POSIX within one file
system). A reader, or the user after a crash, sees either the old file whole or
the new one whole. A folder (a compiled artifact) is built in a temporary folder
beside it and swapped in by `publish_folder`: the old folder is renamed aside
first, so there is no moment with neither in place; should the process die
between the two renames, the old folder is still whole under its hidden name.

What a kill leaves behind is at most a hidden temporary (`.NAME.*.tmp`, or
`.mdoc-*` for folders) next to the output, never a truncated output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import MdocError


def _folder_of(path: Path) -> Path:
    folder = path.resolve().parent
    if not folder.is_dir():
        raise MdocError(f"{path}: folder '{folder}' does not exist")
    return folder


def _new_file_mode(path: Path) -> int:
    """The destination's permissions when it exists, else what `open` would give a new file."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _cannot_write(path: Path, e: OSError) -> MdocError:
    return MdocError(f"{path}: cannot write it: {e.strerror or e}")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(f)` on a temporary binary file beside `path`, then rename it to `path`.

    If `write` raises (or the process is interrupted), `path` keeps its old content
    and the temporary file is removed; an OSError becomes a one-line `MdocError`.
    """
    path = Path(path)
    folder = _folder_of(path)
    if path.is_dir():
        raise MdocError(f"{path}: is a folder; give a file name")
    mode = _new_file_mode(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _cannot_write(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _cannot_write(path, e) from None
        raise
    _fsync_folder(folder)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def publish_file(staged: Path, path: Path) -> None:
    """Rename the finished file `staged` (in `path`'s folder) over `path`, durably."""
    with open(staged, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(staged, path)
    _fsync_folder(path.resolve().parent)


@contextlib.contextmanager
def staging_folder(beside: str | os.PathLike, prefix: str = ".mdoc-") -> Iterator[Path]:
    """A temporary folder in the folder of `beside` (same file system, so renames are atomic),
    removed with whatever is left in it when the block ends."""
    folder = _folder_of(Path(beside))
    try:
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=prefix))
    except OSError as e:
        raise _cannot_write(Path(beside), e) from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_folder(staged: Path, out: Path) -> Path:
    """Swap the finished folder `staged` (beside `out`) into place as `out`.

    The files are fsynced first. An existing `out` is renamed aside, `staged` renamed
    to `out`, and only then is the old one deleted: an interruption leaves the old
    folder or the new one at `out`, never a mixture or nothing.
    """
    for p in staged.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staged, 0o777 & ~umask)  # mkdtemp made it private; an output is for sharing
    parent = out.resolve().parent
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=parent, prefix=".mdoc-old-"))
        os.replace(out, old / out.name)
    try:
        os.replace(staged, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
            old.rmdir()
        raise
    _fsync_folder(parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out
