"""Atomic file and directory writes: a crash leaves either the old content or the new, never a half.

Temporary files and folders are created private (mkstemp: 0600, mkdtemp: 0700, and safetensors writes its
files 0600); before they are renamed into place they get the permissions an ordinary `open()` / `mkdir` would
have given them under the user's umask, so a checkpoint or data folder can be shared or served like any
other file.

`run_lock` gives a run folder one writer: an exclusive `flock` on its `.nanoseek.lock`, which the kernel
releases when the process ends, however it ends (SIGKILL included).

A process killed inside `atomic_dir` leaves its hidden `.NAME.*.tmp` sibling behind. The writer holds an
exclusive `flock` on that folder while it works (the kernel drops it when the process dies), so the next
`atomic_dir` for the same path removes the siblings nobody holds: never a folder another process is writing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from nanoseek.errors import RunInUseError, UserError

try:
    import fcntl
except ImportError:  # not POSIX: no locks, so stale temporaries are left alone
    fcntl = None


def umask() -> int:
    """The process umask, read without changing it where the system allows (Linux: /proc), since setting it to
    read it back races with other threads creating files."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """What open()/mkdir give a new file/folder under the current umask (e.g. 0644 / 0755 under umask 022)."""
    return (0o777 if directory else 0o666) & ~umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` as a whole.

    An existing `path` is moved aside first and deleted only once the new one is in place, so an
    interrupted write never destroys the previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    lock = _lock(tmp)
    try:
        os.chmod(tmp, default_mode(directory=True))
        yield tmp
        file_mode, dir_mode = default_mode(), default_mode(directory=True)
        for f in tmp.rglob("*"):
            if f.is_symlink():
                continue
            # what the writers left may be private (safetensors creates its files 0600): ordinary modes
            os.chmod(f, dir_mode if f.is_dir() else file_mode)
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _lock(directory: Path) -> int | None:
    """An fd holding an exclusive flock on `directory` (None where locks are unavailable)."""
    if fcntl is None:
        return None
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without flock (some network mounts): write unlocked
        os.close(fd)
        return None
    return fd


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries a killed `atomic_dir(path)` left: `.NAME.*.tmp` folders no live process holds
    locked, and a `.NAME.old-PID` folder once `path` itself exists again (were `path` missing, the old folder
    is the only copy of the previous content and is kept). Returns what was removed."""
    path = Path(path)
    removed: list[Path] = []
    if fcntl is None or not path.parent.is_dir():
        return removed
    tmp_name = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")  # what mkdtemp makes below
    old_name = re.compile(rf"\.{re.escape(path.name)}\.old-\d+")
    for p in path.parent.glob(f".{path.name}.*"):
        if not p.is_dir() or p.is_symlink():
            continue
        if tmp_name.fullmatch(p.name):
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held by a live writer (or locks unsupported here): not ours to remove
                continue
            else:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
            finally:
                os.close(fd)
        elif old_name.fullmatch(p.name) and path.exists():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


LOCK_NAME = ".nanoseek.lock"


@contextlib.contextmanager
def run_lock(path: str | os.PathLike, name: str = "") -> Iterator[None]:
    """Hold an exclusive lock on the run folder `path` (created if missing) for the duration; a second writer
    gets RunInUseError naming the process that holds it. `name`: how the user named the folder (a flag), for
    the message. A folder this call created and nothing else wrote to is removed again."""
    path = Path(path)
    if fcntl is None:
        yield
        return
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, default_mode())
    except OSError as e:
        raise UserError(f"{name or path}: cannot create the run folder {path} ({e.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise RunInUseError(f"{(name + ' ') if name else ''}{path} is in use by another nanoseek process"
                                f"{f' (pid {pid})' if pid.isdigit() else ''} writing to it; wait for it to end (or "
                                f"stop it), or choose another folder", param=name or None) from None
        except OSError:  # a file system without flock: work unlocked, as before locks existed
            pass
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            if created and sorted(p.name for p in path.iterdir()) == [LOCK_NAME]:  # nothing was written
                with contextlib.suppress(OSError):
                    os.unlink(path / LOCK_NAME)  # while still locked: no one else holds this file
                    path.rmdir()
    finally:
        os.close(fd)
