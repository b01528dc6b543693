"""Test-session set-up shared by all test modules."""

import os

import pytest


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
