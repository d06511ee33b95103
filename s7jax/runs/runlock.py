"""A run folder belongs to one run, written by one process at a time: an
``flock`` on ``<workdir>/.lock``, which the kernel drops however the process
exits, so a crashed run's lock is never in the way."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import time
from pathlib import Path

from s7jax.runs import runfiles
from s7jax.errors import ConfigError

LOCK_NAME = ".lock"


def _lock(workdir: Path):
    """The locked ``.lock`` file's descriptor, or ConfigError naming its holder."""
    path = workdir / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(20):  # the holder writes its pid just after it takes the lock
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                if holder:
                    break
                time.sleep(0.05)
            os.close(fd)
            holder = holder or "another process"
            raise ConfigError(f"workdir {workdir} is in use by {holder}; wait for it to finish, "
                              "or choose another --workdir") from None
        # The holder before us removes the file as it lets go (see claim): a
        # lock on a file no longer at ``path`` holds nothing; open it again.
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}, since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def claim(workdir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
          advice: str | None = None):
    """Hold ``workdir`` for one run for the ``with`` block: create and lock
    it, and unless ``resume`` refuse a folder that holds a run (``overwrite``:
    delete that run's files)."""
    workdir = Path(workdir)
    if workdir.is_symlink() and not workdir.exists():
        try:
            what = f"a symlink to {os.readlink(workdir)}, which does not exist; create its target"
            os.stat(workdir)
        except OSError as e:
            what = "a symlink loop; remove it" if e.errno == errno.ELOOP else what
        raise ConfigError(f"workdir {workdir} is {what} or choose another --workdir")
    if not runfiles.writes_files():  # another host of a multi-host run: the first one claims
        yield workdir
        return
    # A folder made for this run (absent, or empty as unique_dir leaves it) is
    # removed again if the run fails before it saved anything.
    created = not workdir.exists() or (workdir.is_dir() and not any(workdir.iterdir()))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        fd = _lock(workdir)
    except OSError as e:
        raise ConfigError(f"workdir {workdir} is not writable: {e.strerror or e}") from None
    try:
        ckpts = runfiles.checkpoint_dir(workdir)
        if ckpts.exists() and not ckpts.is_dir():
            raise ConfigError(f"{ckpts} is a file where the run's checkpoints folder goes; "
                              "move it away or choose another --workdir")
        # A run killed before its first checkpoint or epoch left the folder free.
        if not resume and _saved_anything(workdir):
            if not overwrite:
                existing = [p.name for p in (runfiles.config_path(workdir),
                                             runfiles.metrics_path(workdir)) if p.is_file()]
                existing += [f"{runfiles.CHECKPOINTS}/"] * bool(_checkpoints(workdir))
                advice = advice or f"pass --resume {workdir} to continue it, or --overwrite to replace it"
                raise ConfigError(
                    f"workdir {workdir} already holds a run ({', '.join(existing)}); {advice}")
            _clear(workdir)
        yield workdir
    except BaseException:
        if created and not _saved_anything(workdir):
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        # Removed while still locked, so a refused --resume leaves the folder
        # as it was (_lock checks that the file it locked is still there).
        # Closing releases the lock; a killed process leaves the file.
        with contextlib.suppress(OSError):
            (workdir / LOCK_NAME).unlink()
        os.close(fd)


def _saved_anything(workdir: Path) -> bool:
    """A checkpoint or a recorded epoch: what a failed run must not lose."""
    if _checkpoints(workdir):
        return True
    try:
        return bool(runfiles.metrics_path(workdir).read_text().strip())
    except OSError:
        return False


def _checkpoints(workdir: Path) -> list[Path]:
    """Orbax's temporary folders left out: a save killed before its rename saved nothing."""
    ckpts = runfiles.checkpoint_dir(workdir)
    return [p for p in ckpts.iterdir() if ".orbax-checkpoint-tmp" not in p.name] if ckpts.is_dir() else []


def _clear(workdir: Path) -> None:
    """``--overwrite``: delete a previous run's files, nothing else."""
    try:
        for name in runfiles.RUN_FILES:
            (workdir / name).unlink(missing_ok=True)
        for folder in runfiles.RUN_FOLDERS:
            if (workdir / folder).is_dir():
                shutil.rmtree(workdir / folder)
    except OSError as e:
        raise ConfigError(f"--overwrite: could not delete the old run in {workdir}: "
                          f"{e.strerror or e}") from None
