"""Suite-wide checks, and one scratch directory for everything the tests write."""

import os
import shutil
import tempfile
import threading

import pytest


@pytest.fixture(scope="session", autouse=True)
def scratch_directory():
    """Every temporary file and directory of the run (the tests' own and their subprocesses') lives in
    one directory, removed at the end, so a run leaves nothing behind in the system's /tmp."""
    root = tempfile.mkdtemp(prefix="relayd-tests-")
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = root
    os.environ["TMPDIR"] = root
    yield root
    tempfile.tempdir = saved[0]
    if saved[1] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[1]
    shutil.rmtree(root, ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    """A thread left running (a store never closed, say) would keep the process from exiting: fail instead."""
    lingering = [t.name for t in threading.enumerate()
                 if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if lingering:
        print(f"\nthreads still running at the end of the tests: {', '.join(lingering)}")
        session.exitstatus = 1
