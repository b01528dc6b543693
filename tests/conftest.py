"""Test-session set-up shared by all test modules."""

import os
import pathlib
import subprocess

import pytest

from tests.tiny_runs import build_tiny_sudoku


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny Sudoku dataset built from the shipped puzzles, once per test module (a module may define its own)."""
    return build_tiny_sudoku(str(tmp_path_factory.mktemp("data")))


@pytest.fixture
def disk_events(monkeypatch) -> list:
    """Every os.fsync (with the file's size) and os.replace of the test, in order: how atomic writes
    are checked to reach the disk before the rename."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def recording_fsync(descriptor):
        events.append(("fsync", os.fstat(descriptor).st_size))
        real_fsync(descriptor)

    def recording_replace(source, destination):
        events.append(("replace", os.path.basename(source), os.path.basename(destination)))
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    return events


class Tmpfs:
    """Small file systems of their own for a test (`size` as mount takes it, e.g. "2m"), unmounted at
    its end. Mounting needs root: without it the test is skipped, with the reason."""

    def __init__(self, folder: pathlib.Path):
        self.folder, self.mounted = folder, []

    def mount(self, name: str, size: str, *options: str) -> pathlib.Path:
        if os.geteuid() != 0:
            pytest.skip("a tmpfs of its own needs root to mount")
        path = self.folder / name
        path.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"mounting a tmpfs failed here: {result.stderr.strip()}")
        self.mounted.append(path)
        return path

    def resize(self, path: pathlib.Path, size: str) -> None:
        """More room (space freed) or less (a disk filling up)."""
        subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


@pytest.fixture
def tmpfs(tmp_path):
    mounts = Tmpfs(tmp_path)
    yield mounts
    for path in reversed(mounts.mounted):
        subprocess.run(["umount", str(path)], check=True)
