"""One claim per cell: a lock file beside the results, so two identical runs never compute a cell together.

`<results>/.lock-<run id>` is created exclusively (O_EXCL) and holds the holder's host, pid and start time;
a thread touches it every HEARTBEAT_S seconds while the cell runs. A second caller waits until the lock is
gone and then reads the finished result. A lock is stale, and is taken over, when its holder is a dead
process on this host, or when nobody has touched it for STALE_S seconds (a holder on another machine that
died); taking over renames the stale file away first, so of two callers only one wins.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

HEARTBEAT_S = 10.0
STALE_S = 60.0


def lock_path(results: Path, run_id: str) -> Path:
    return Path(results) / f".lock-{run_id}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def is_stale(path: Path, stale_s: float = STALE_S) -> bool:
    try:
        info = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return False  # vanished (released) or being written: not ours to take
    if info.get("host") == socket.gethostname() and not _alive(int(info.get("pid", -1))):
        return True
    return age > stale_s


def _try_create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}, f)
    return True


def _take_over(path: Path) -> bool:
    """Move a stale lock aside (atomic: one caller's rename succeeds) and create ours."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}-{time.time_ns()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        pass  # someone else moved it (or it was released): just try to create
    else:
        aside.unlink(missing_ok=True)
    return _try_create(path)


class _Toucher(threading.Thread):
    def __init__(self, path: Path, every: float):
        super().__init__(daemon=True)
        self.path, self.every, self.stop = path, every, threading.Event()

    def run(self):
        while not self.stop.wait(self.every):
            try:
                os.utime(self.path)
            except OSError:
                return


@contextmanager
def claim(results: Path, run_id: str, on_wait=None, poll: float = 1.0, heartbeat: float = HEARTBEAT_S,
          stale_s: float = STALE_S):
    """Hold the cell's lock for the block; wait (calling `on_wait()` once) while another live holder has it."""
    path = lock_path(results, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while not _try_create(path):
        if is_stale(path, stale_s) and _take_over(path):
            break
        if not waited and on_wait is not None:
            on_wait()
        waited = True
        time.sleep(poll)
    toucher = _Toucher(path, heartbeat)
    toucher.start()
    try:
        yield waited
    finally:
        toucher.stop.set()
        toucher.join()
        path.unlink(missing_ok=True)
