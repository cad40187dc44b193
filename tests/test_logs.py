"""Log output chosen in the config."""

import io
import json
import sys

from twisted.application.service import Application
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import TestCase

from relayd.logs import make_observer
from relayd.service import RelaydService
from relayd.store import MemoryStore
from tests.support import BASE_INI, make_config


class LogTests(TestCase):
    def test_json_lines_with_fields(self):
        """log_format json writes one JSON object per line, with the event's keyword fields."""
        out = io.StringIO()
        Logger(observer=make_observer("json", "info", out)).info("listening on {endpoint}", endpoint="tcp:8080")
        record = json.loads(out.getvalue().strip())
        self.assertEqual(record["endpoint"], "tcp:8080")
        self.assertEqual(record["log_format"], "listening on {endpoint}")

    def test_level_filter(self):
        """Events below the configured level are not written."""
        out = io.StringIO()
        log = Logger(observer=make_observer("text", "warn", out))
        log.info("quiet")
        log.warn("loud")
        self.assertNotIn("quiet", out.getvalue())
        self.assertIn("loud", out.getvalue())

    def test_twistd_application_gets_the_configured_observer(self):
        """The service hands twistd its configured observer through the application's ILogObserver."""
        from twisted.internet.testing import MemoryReactorClock

        config = make_config(base=BASE_INI.replace("drain_timeout = 10", "log_format = json\nlog_level = warn"))
        application = Application("relayd")
        out = io.StringIO()
        self.patch(sys, "stdout", out)  # where the configured observer writes
        RelaydService(config, reactor=MemoryReactorClock(), store=MemoryStore()).setServiceParent(application)
        observer = application.getComponent(ILogObserver, None)
        self.assertIsNotNone(observer)
        Logger(observer=observer).info("dropped at warn")
        Logger(observer=observer).warn("kept {n}", n=1)
        [line] = out.getvalue().splitlines()
        self.assertEqual(json.loads(line)["text"], "kept 1")


class OperatorLogTests(TestCase):
    def test_json_lines_carry_text_and_exception(self):
        """A JSON log line has the rendered message, and for a failure the exception's traceback."""
        out = io.StringIO()
        log = Logger(observer=make_observer("json", "info", out))
        log.info("listening on {endpoint}", endpoint="tcp:8080")
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("app {app} failed to start", app="carparty")
        first, second = (json.loads(line) for line in out.getvalue().splitlines())
        self.assertEqual(first["text"], "listening on tcp:8080")
        self.assertEqual(second["text"], "app carparty failed to start")
        self.assertIn("ZeroDivisionError: division by zero", second["exception"])

    def test_sighup_says_what_it_reloaded(self):
        """A reload with no TLS listener logs that there was nothing to reload."""
        from twisted.internet.testing import MemoryReactorClock
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service = RelaydService(make_config(), reactor=MemoryReactorClock(), store=MemoryStore())
        service.reload()
        self.assertIn("SIGHUP: nothing to reload", " ".join(e.get("log_format", "") for e in events))
