"""File-system steps that a crash or a kill must never leave half done.

Writing a file atomically (to a temporary name in the same folder, flushed to disk, then renamed:
neither a reader nor a crash of the process or the host ever sees it half-written), swapping two
folders in one step, syncing a folder's entries, and telling whether a process is still alive.
"""

import ctypes
import errno
import functools
import os
import sys
from typing import IO, Callable, Optional

# renameat2(2): paths relative to the working directory, and the flag that swaps both names.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def write_atomically(path: str, write_contents: Callable[[IO], None], binary: bool = False) -> None:
    partial_path = f"{path}.partial"
    with open(partial_path, "wb" if binary else "w") as file:
        write_contents(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial_path, path)


def write_text_atomically(path: str, text: str) -> None:
    write_atomically(path, lambda file: file.write(text))


@functools.lru_cache(maxsize=None)
def _renameat2() -> Optional[Callable]:
    """glibc's renameat2 (Linux, glibc 2.28 and later); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        function.restype = ctypes.c_int
    return function


def exchange_paths(first: str, second: str) -> bool:
    """Swap the names of two existing files or folders in one atomic step: at every moment each
    name holds one of the two. Returns False, changing nothing, where the operating system or the
    file system cannot (not Linux, an old kernel or C library, a file system such as NFS)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), first, None, second)


def sync_folder(path: str) -> None:
    """Flush a folder's entries (names created, renamed or removed in it) to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def process_is_running(pid: int) -> bool:
    """Whether a process with this id exists on this machine (possibly another program that
    reused the id of one that ended)."""
    if sys.platform == "win32":
        return True  # os.kill would terminate it: there is no harmless probe
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True
