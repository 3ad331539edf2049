"""Waiting until a child process is blocked, before a test sends it a signal.

A SIGINT that lands while the child's main thread is inside a DuckDB call can be absorbed by
DuckDB (it interrupts the query instead of raising KeyboardInterrupt), and a loaded machine
makes that window wide. Tests that check Ctrl-C handling therefore wait until the main thread
sits in a blocking system call (reading stdin, waiting on a socket) and only then signal it.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path


def default_sigint() -> None:
    """``preexec_fn`` for a child that must react to Ctrl-C: a shell without job control
    starts background jobs (a CI script run with ``&``) with SIGINT ignored, children inherit
    that, and Python then never raises KeyboardInterrupt. Restore the default first."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# x86_64 Linux syscall numbers. Not futex: a main thread waiting for DuckDB's worker threads
# sits in futex, and that is exactly when a signal must not be sent.
READ = frozenset({0})
EVENT_LOOP_WAIT = frozenset({7, 23, 232, 270, 271, 281, 441})  # poll, select, epoll_wait, ...


def main_thread_syscall(pid: int) -> int | None:
    """The system call the process's main thread is blocked in, or None while it runs."""
    try:
        field = Path(f"/proc/{pid}/syscall").read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(field) if field.lstrip("-").isdigit() else None


def wait_until_blocked(
    pid: int, calls: frozenset[int], timeout: float = 60.0, settle: float = 0.2
) -> None:
    """Return once ``pid``'s main thread has stayed in one of the system calls ``calls`` for
    ``settle`` seconds; raise AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    since: float | None = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        if main_thread_syscall(pid) in calls:
            since = now if since is None else since
            if now - since >= settle:
                return
        else:
            since = None
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never blocked (syscall {main_thread_syscall(pid)})")
