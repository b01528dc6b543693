"""One run at a time in a run folder: `run.lock`, held by the run's main process while it runs.

The lock file names its owner (process id, host, start time) and appears complete or not at all: it
is written under a temporary name and linked into place, which fails if a lock exists. The owner
also holds an flock on it; the kernel drops that when the process ends, however it ends. So a lock
file whose flock is free was left by a run that is over (killed, crashed) and is taken over with a
note. A lock written on another host is left alone: this host cannot see whether that run goes on.
The training loop takes it through utils.checkpoint.run_folder_lock (rank 0 for all ranks).
"""

import errno
import fcntl
import json
import os
import socket
import time
from typing import Optional

from utils.files import process_is_running, remove_if_present

LOCK_FILE_NAME = "run.lock"
# How long a process waits for another that is taking over a lock left by an ended run.
TAKE_OVER_WAIT_SECONDS = 5.0
# What flock raises where the file system has no locks (some network and cluster file systems).
LOCKS_UNSUPPORTED_ERRNOS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF)


class RunFolderError(ValueError):
    """A run folder this run cannot use; the message names the folder (or its lock) and what to do."""


class RunLock:
    """A held lock: its path, the open file whose flock this process holds, and whether taking it
    created the run folder."""

    def __init__(self, path: str, descriptor: int, created_folder: bool = False):
        self.path, self.descriptor, self.created_folder = path, descriptor, created_folder

    def release(self) -> None:
        try:
            if os.path.samestat(os.fstat(self.descriptor), os.stat(self.path)):
                os.remove(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self.descriptor)
        if self.created_folder:
            # A run that stopped before writing anything leaves no empty folder behind.
            try:
                os.rmdir(os.path.dirname(self.path))
            except OSError:
                pass


def acquire_run_lock(folder: str) -> RunLock:
    """Create `folder` if needed and take its lock, or raise RunFolderError saying who holds it."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise RunFolderError(f"checkpoint_path={folder} is a file, not a folder: set checkpoint_path to a folder (new or a run's).")
    path = os.path.join(folder, LOCK_FILE_NAME)
    partial_path = f"{path}.{os.getpid()}.partial"
    created_folder = not os.path.exists(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        descriptor = os.open(partial_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as error:
        raise RunFolderError(
            f"cannot write in checkpoint_path={folder} ({error.strerror}): set checkpoint_path to a folder this user can write to."
        ) from None
    try:
        os.write(descriptor, json.dumps(owner_record()).encode())
        os.fsync(descriptor)
        flock(descriptor)  # a new file of this process: always free
        give_up_waiting_at = time.monotonic() + TAKE_OVER_WAIT_SECONDS
        while not _link_or_take_over(partial_path, path, time.monotonic() < give_up_waiting_at):
            pass
    except BaseException:
        os.close(descriptor)
        raise
    finally:
        remove_if_present(partial_path)
    return RunLock(path, descriptor, created_folder)


def owner_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def flock(descriptor: int) -> Optional[bool]:
    """Try to take the flock: True if taken, False if another process holds it, None where the file system has none."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in LOCKS_UNSUPPORTED_ERRNOS:
            return None
        raise


def _link_or_take_over(partial_path: str, path: str, may_wait: bool) -> bool:
    """Put our lock file in place; False when another process changed the lock meanwhile, or is taking
    over a lock left by an ended run and `may_wait` (try again)."""
    try:
        os.link(partial_path, path)
        return True
    except FileExistsError:
        pass
    try:
        existing = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False  # released meanwhile
    try:
        owner = _read_owner(existing)
        taken = flock(existing)
        # A file that is no longer the lock (its owner released it, or another process took it over
        # meanwhile) proves nothing, whoever holds its flock: look again.
        if taken is not None and not _is_the_lock(existing, path):
            return False
        if may_wait and taken is False and _running_on_this_host(owner) is False:
            # The flock of a lock left by a run that ended is held by another process taking the folder
            # over at this moment: look again once that one has put its own lock in place.
            time.sleep(0.01)
            return False
        # Without locks on this file system, the owner's process is looked for where this host can see it.
        owner_running = not taken if taken is not None else _running_on_this_host(owner) is True
        if owner_running:
            raise RunFolderError(
                f"{os.path.dirname(path)} is in use: {_describe(owner)} is running there and holds {path}. "
                "Let it finish, or give this run another checkpoint_path (or run_name)."
            )
        if owner is not None and owner.get("host") != socket.gethostname():
            raise RunFolderError(
                f"{path} says that {_describe(owner)} runs in this folder; from {socket.gethostname()} it cannot be told "
                f"whether that run goes on. If it has ended, remove the lock (rm {path}) and start again; else give this "
                "run another checkpoint_path (or run_name)."
            )
        os.replace(partial_path, path)
        print(f"Note: {path} was left by {_describe(owner)}, which is no longer running: this run takes the folder over.")
        return True
    finally:
        os.close(existing)


def _is_the_lock(descriptor: int, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False


def _running_on_this_host(owner: Optional[dict]) -> Optional[bool]:
    """Whether the lock's process is running, where the lock names a process of this host; else None."""
    if owner is None or owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return None
    return process_is_running(owner["pid"])


def _read_owner(descriptor: int) -> Optional[dict]:
    try:
        owner = json.loads(os.pread(descriptor, 4096, 0))
    except (ValueError, UnicodeDecodeError):
        return None
    return owner if isinstance(owner, dict) else None


def _describe(owner: Optional[dict]) -> str:
    if owner is None:
        return "an unknown process (the lock file is not ours, or unreadable)"
    return f"process {owner.get('pid')} on host {owner.get('host')} (started {owner.get('started')})"
