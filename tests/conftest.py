"""Suite-wide checks."""

import threading


def pytest_sessionfinish(session, exitstatus):
    """A thread left running (a store never closed, say) would keep the process from exiting: fail instead."""
    lingering = [t.name for t in threading.enumerate()
                 if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if lingering:
        print(f"\nthreads still running at the end of the tests: {', '.join(lingering)}")
        session.exitstatus = 1
