"""utils.run_lock: one run at a time in a run folder. Real processes hold, lose and race for the lock;
the whole runs (pretrain.py, torchrun) are in tests/test_training_faults.py."""

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.tiny_runs import REPO_ROOT
from utils.run_lock import LOCK_FILE_NAME, RunFolderError, acquire_run_lock

# A process that takes the lock of the folder in argv[1] at the time in argv[2] (time.time()), says
# what happened in one line (notes go to stderr), and holds the lock until its standard input closes.
HOLDER = """
import contextlib, sys, time
from utils.run_lock import RunFolderError, acquire_run_lock
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
try:
    with contextlib.redirect_stdout(sys.stderr):
        lock = acquire_run_lock(sys.argv[1])
except RunFolderError as error:
    print("refused:", error, flush=True)
    sys.exit(3)
print("holding", flush=True)
sys.stdin.read()
lock.release()
"""


def start_holder(folder, start_at: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(start_at)], cwd=REPO_ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_line(process: subprocess.Popen) -> str:
    return process.stdout.readline().strip()


def write_lock(folder, **owner):
    folder.mkdir(exist_ok=True)
    (folder / LOCK_FILE_NAME).write_text(json.dumps(owner))


def dead_process_id() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_the_lock_names_its_owner_and_goes_at_release(tmp_path):
    folder = tmp_path / "new" / "run"
    lock = acquire_run_lock(str(folder))
    owner = json.loads((folder / LOCK_FILE_NAME).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname() and owner["started"]
    assert os.listdir(folder) == [LOCK_FILE_NAME]  # no temporary file left
    lock.release()
    # The lock created the folder and nothing else was written in it: it goes too.
    assert not folder.exists() and (tmp_path / "new").is_dir()

    # A folder that existed before the lock stays, with whatever it holds.
    folder.mkdir()
    lock = acquire_run_lock(str(folder))
    lock.release()
    assert os.listdir(folder) == []


def test_a_held_lock_refuses_a_second_run_naming_the_first(tmp_path):
    holder = start_holder(tmp_path)
    assert wait_for_line(holder) == "holding"
    with pytest.raises(RunFolderError) as refused:
        acquire_run_lock(str(tmp_path))
    assert str(refused.value) == (
        f"{tmp_path} is in use: process {holder.pid} on host {socket.gethostname()} (started "
        f"{json.loads((tmp_path / LOCK_FILE_NAME).read_text())['started']}) is running there and holds {tmp_path / LOCK_FILE_NAME}. "
        "Let it finish, or give this run another checkpoint_path (or run_name)."
    )
    holder.stdin.close()
    assert holder.wait() == 0
    acquire_run_lock(str(tmp_path)).release()


def test_the_lock_of_a_killed_run_is_taken_over_with_a_note(tmp_path, capsys):
    holder = start_holder(tmp_path)
    assert wait_for_line(holder) == "holding"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / LOCK_FILE_NAME).exists()  # a killed process cannot remove it

    lock = acquire_run_lock(str(tmp_path))
    note = capsys.readouterr().out
    assert f"Note: {tmp_path / LOCK_FILE_NAME} was left by process {holder.pid} on host {socket.gethostname()}" in note
    assert "which is no longer running: this run takes the folder over" in note
    assert json.loads((tmp_path / LOCK_FILE_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_stale_lock_of_this_host_is_taken_over(tmp_path, capsys):
    pid = dead_process_id()
    write_lock(tmp_path, pid=pid, host=socket.gethostname(), started="yesterday")
    acquire_run_lock(str(tmp_path)).release()
    assert f"left by process {pid} on host {socket.gethostname()} (started yesterday), which is no longer running" in capsys.readouterr().out


def test_a_lock_of_another_host_is_reported_with_the_command_to_remove_it(tmp_path):
    write_lock(tmp_path, pid=4242, host="gpu-node-7", started="2026-01-01 00:00:00 UTC")
    path = tmp_path / LOCK_FILE_NAME
    with pytest.raises(RunFolderError) as refused:
        acquire_run_lock(str(tmp_path))
    assert str(refused.value) == (
        f"{path} says that process 4242 on host gpu-node-7 (started 2026-01-01 00:00:00 UTC) runs in this folder; from "
        f"{socket.gethostname()} it cannot be told whether that run goes on. If it has ended, remove the lock (rm {path}) "
        "and start again; else give this run another checkpoint_path (or run_name)."
    )
    assert json.loads(path.read_text())["host"] == "gpu-node-7"  # left alone


def test_without_file_locks_the_owner_process_decides(tmp_path, monkeypatch, capsys):
    # Some network and cluster file systems have no flock: a lock of this host is judged by whether
    # its process still runs.
    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    write_lock(tmp_path, pid=holder.pid, host=socket.gethostname(), started="now")
    with pytest.raises(RunFolderError, match=f"is in use: process {holder.pid} on host"):
        acquire_run_lock(str(tmp_path))
    holder.stdin.close()
    holder.wait()
    acquire_run_lock(str(tmp_path)).release()
    assert f"left by process {holder.pid}" in capsys.readouterr().out


@pytest.mark.parametrize("stale_lock", [False, True])
def test_of_processes_racing_for_one_folder_exactly_one_gets_it(tmp_path, stale_lock):
    if stale_lock:
        write_lock(tmp_path, pid=dead_process_id(), host=socket.gethostname(), started="yesterday")
    start_at = time.time() + 3  # all four have started Python by then
    racers = [start_holder(tmp_path, start_at) for _ in range(4)]
    answers = [wait_for_line(racer) for racer in racers]
    assert sorted(answer.split(":")[0] for answer in answers) == ["holding", "refused", "refused", "refused"]
    winner = racers[answers.index("holding")]
    for racer, answer in zip(racers, answers):
        if racer is not winner:
            assert f"is in use: process {winner.pid} on host" in answer
            assert racer.wait() == 3
    winner.stdin.close()
    assert winner.wait() == 0
    assert os.listdir(tmp_path) == []


def test_a_file_or_an_unwritable_place_is_refused_clearly(tmp_path, tmpfs):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    with pytest.raises(RunFolderError, match=f"^checkpoint_path={file} is a file, not a folder: set checkpoint_path to a folder"):
        acquire_run_lock(str(file))
    assert file.read_text() == "mine"

    read_only = tmpfs.mount("read_only", "64k", "ro")
    with pytest.raises(RunFolderError, match=rf"^cannot write in checkpoint_path={read_only}/run \(Read-only file system\): "
                                             "set checkpoint_path to a folder this user can write to"):
        acquire_run_lock(str(read_only / "run"))


def test_a_lock_file_that_is_not_ours_is_named_as_such(tmp_path, capsys):
    (tmp_path / LOCK_FILE_NAME).write_text("locked by hand")
    acquire_run_lock(str(tmp_path)).release()
    assert "was left by an unknown process (the lock file is not ours, or unreadable)" in capsys.readouterr().out
