"""Files the zoo reads and writes: only regular files are opened (a FIFO or a device would make
a read hang or never end), and every write goes to a temporary file beside the target, renamed
over it only when complete."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional, Union

__all__ = ["FileKindError", "TEMP_SUFFIX", "atomic_path", "remove_leftover_temporaries", "regular_file",
           "write_through_memory"]

PathLike = Union[str, Path]
TEMP_SUFFIX = ".tmp"
_TEMP_STEM = 24  # characters of the target's name kept in the temporary name


class FileKindError(ValueError):
    """A path that exists but is not a regular file (a folder, FIFO, device or socket)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def regular_file(path: PathLike, what: str, max_bytes: Optional[int] = None) -> Path:
    """``path`` as a ``Path`` if it names a regular file (symbolic links followed), at most
    ``max_bytes`` long. Otherwise ``FileNotFoundError`` or ``FileKindError``, naming ``what``
    (e.g. "config") and what the path is instead; nothing is opened, so nothing can hang."""
    p = Path(path)
    if str(path).strip() == "":
        raise FileKindError(f"{what}: an empty path")
    try:
        st = p.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {p}: no such file") from None
    except OSError as exc:  # a symlink loop, a name too long, a component that is a file
        raise FileKindError(f"{what} {p}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise FileKindError(f"{what} {p}: is {_kind(st.st_mode)}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise FileKindError(f"{what} {p}: {st.st_size:,} bytes, more than the {max_bytes:,} a {what} may have")
    return p


TEMP_MARK = "dszoo-"
"""In every temporary file's name after the target's: ``remove_leftover_temporaries`` removes
only files named so, never a user's own ``.NAME.something.tmp``."""


def _temp_prefix(target: Path) -> str:
    # Never longer than the target's own name allows: a name near the file system's limit
    # must not fail only because of its temporary twin.
    return f".{target.name[:_TEMP_STEM]}.{TEMP_MARK}"


@contextlib.contextmanager
def atomic_path(target: PathLike, replace: bool = True) -> Iterator[str]:
    """Yield a temporary path in ``target``'s folder; on success it replaces ``target``.

    Killing the process at any moment leaves either the old file or the new one, never a
    truncated file (a killed write leaves a ``.NAME.XXXX.tmp`` file, which
    ``remove_leftover_temporaries`` clears). On error the temporary file is removed and
    ``target`` is untouched. With ``replace=False`` the file is linked into place only if
    ``target`` still does not exist at that moment (``FileExistsError`` otherwise): a file
    created there while the work ran is never clobbered.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make the result private
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)  # atomic, and fails if target exists
    except OSError as exc:
        if exc.filename is None:  # a full disk says only "No space left on device": name the file
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def folder_in_place(target: PathLike) -> Iterator[Path]:
    """Yield a new temporary folder beside ``target``; on success it becomes ``target`` in one
    rename, so that ``target`` never holds part of the work (a failure or a kill leaves nothing
    there, and a rerun is not refused by an empty folder). ``target`` must not exist or be an
    empty folder (an ``OSError`` if files appeared there meanwhile). An ``OSError`` inside names
    the file under ``target`` it was writing, not its temporary twin."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent))
    try:
        yield work
        os.chmod(work, 0o777 & ~_umask())  # mkdtemp's 0700 would make the result private
        os.rename(work, target)
    except OSError as exc:
        named = str(exc.filename or "")
        if named.startswith(str(work)):
            raise OSError(exc.errno, exc.strerror or str(exc), str(target) + named[len(str(work)):]) from exc
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_through_memory(path: PathLike, save: Callable[[BinaryIO], Any]) -> None:
    """``save(buffer)`` into memory, then its bytes written to ``path`` by Python's own I/O, so
    that a full disk (or a file-size limit) is an ``OSError`` that ``atomic_path`` names the file
    in: PyTorch's C++ writer aborts the interpreter there (``torch.jit.save``,
    ``torch.export.save``) or raises an untyped ``RuntimeError`` (``torch.save``), and safetensors
    raises its own error. Costs the file's size in memory while it is written."""
    buffer = io.BytesIO()
    save(buffer)
    with open(path, "wb") as fh:
        fh.write(buffer.getbuffer())


def remove_leftover_temporaries(folder: PathLike, names: tuple[str, ...],
                                older_than: Optional[float] = None) -> list[Path]:
    """Delete the temporary files a killed ``atomic_path`` write of any of ``names`` left in
    ``folder``; returns them. Call it only while no other process writes there (a training run
    holds its folder's lock), or pass ``older_than`` seconds: only files untouched that long go."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    prefixes = tuple(_temp_prefix(folder / name) for name in names)
    removed = []
    for entry in folder.iterdir():
        if entry.name.startswith(prefixes) and entry.name.endswith(TEMP_SUFFIX) and entry.is_file() and (
                older_than is None or time.time() - entry.stat().st_mtime > older_than):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed

