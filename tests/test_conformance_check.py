"""conformance/check.py: what makes a conformance run pass or fail."""

import json
import os
import tempfile

from twisted.trial.unittest import TestCase

from conformance import check


def report_dir(cases):
    directory = tempfile.mkdtemp()
    index = {"relayd-ws": {}}
    for case, (behavior, close, description, code) in cases.items():
        name = f"case_{case.replace('.', '_')}.json"
        index["relayd-ws"][case] = {"behavior": behavior, "behaviorClose": close, "reportfile": name}
        with open(os.path.join(directory, name), "w") as f:
            json.dump({"description": description, "remoteCloseCode": code}, f)
    with open(os.path.join(directory, "index.json"), "w") as f:
        json.dump(index, f)
    return directory


class CheckTests(TestCase):
    def test_passing_run(self):
        """OK, NON-STRICT and INFORMATIONAL cases pass, and an oversized message closed with 1009 passes."""
        directory = report_dir({
            "1.1.1": ("OK", "OK", "", 1000),
            "6.4.1": ("NON-STRICT", "OK", "", 1007),
            "7.1.6": ("INFORMATIONAL", "INFORMATIONAL", "", 1000),
            "9.1.2": ("FAILED", "FAILED", "Send text message message with payload of length 256 * 2**10 (256k).", 1009),
        })
        self.assertEqual(check.main([directory, "--limit", "65536"]), 0)

    def test_failures_fail(self):
        """A failed case fails the run, and so does an oversized case closed with anything but 1009."""
        self.assertEqual(check.main([report_dir({"5.1": ("FAILED", "OK", "", 1002)}), "--limit", "65536"]), 1)
        oversized = {"9.1.2": ("FAILED", "FAILED", "payload of length 256 * 2**10", 1000)}
        self.assertEqual(check.main([report_dir(oversized), "--limit", "65536"]), 1)
        within = {"9.1.1": ("FAILED", "FAILED", "payload of length 64 * 2**10", 1009)}
        self.assertEqual(check.main([report_dir(within), "--limit", "65536"]), 1)

    def test_empty_report_fails(self):
        """A report with no cases is a failure, not a pass."""
        directory = tempfile.mkdtemp()
        with open(os.path.join(directory, "index.json"), "w") as f:
            json.dump({}, f)
        self.assertEqual(check.main([directory]), 1)
