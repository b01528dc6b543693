"""File-system steps that a crash, a kill or a full disk must never leave half done.

Writing a file atomically (to a temporary name in the same folder, flushed to disk, then renamed:
neither a reader nor a crash of the process or the host ever sees it half-written, and a write that
finds the disk full leaves no partial file and says how many bytes it needed), swapping two folders
in one step, syncing a folder's entries, and telling whether a process is still alive.
"""

import ctypes
import errno
import functools
import os
import shutil
import sys
from typing import IO, Callable, Optional

# renameat2(2): paths relative to the working directory, and the flag that swaps both names.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2

# What the operating system reports when a write finds no room: the disk is full, or the user's quota is.
OUT_OF_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write that found no room on its disk; the message names the file, the bytes it needs and the bytes free."""


def write_atomically(path: str, write_contents: Callable[[IO], None], binary: bool = False) -> None:
    partial_path = f"{path}.partial"
    try:
        with open(partial_path, "wb" if binary else "w") as file:
            write_contents(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial_path, path)
    except BaseException as error:
        # Also on Ctrl-C: the partial file must not stay behind.
        remove_if_present(partial_path)
        if isinstance(error, Exception) and is_out_of_space(error):
            raise disk_full_error(path, needed_bytes(write_contents, binary)) from error
        raise


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


def remove_if_present(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def is_out_of_space(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is the operating system's 'no space left'.
    torch.save reports a failed write as a RuntimeError raised while handling the OSError."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in OUT_OF_SPACE_ERRNOS:
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_error(path: str, needed: int) -> DiskFullError:
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    return DiskFullError(
        f"no space left on the disk for {path}: it needs {byte_count(needed)} and {byte_count(free)} are free there. "
        "Nothing was left half-written. Free some space (or write to another disk), then run again."
    )


def byte_count(count: int) -> str:
    """'1,234,567 bytes (1.2 MiB)': exact, and readable at a glance."""
    size, unit = float(count), "bytes"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, larger
    return f"{count:,} bytes" + ("" if unit == "bytes" else f" ({size:.1f} {unit})")


class _ByteCounter:
    """A file that keeps nothing and counts what is written to it."""

    def __init__(self, binary: bool):
        self.binary, self.count = binary, 0

    def write(self, data) -> int:
        self.count += len(data) if self.binary else len(data.encode())
        return len(data)

    def flush(self) -> None:
        pass


def needed_bytes(write_contents: Callable[[IO], None], binary: bool) -> int:
    """The size of what `write_contents` writes, found by writing it again to nowhere."""
    counter = _ByteCounter(binary)
    write_contents(counter)
    return counter.count


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
