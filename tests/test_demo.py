"""Demo pages: served per app only when the app's config says demo = yes."""

from twisted.trial.unittest import TestCase

from tests.support import Harness, make_config

APPS = ["testee", "wikispeedruns", "clicker", "groovejet", "gameroom", "carparty"]


def config(demo: str):
    sections = "".join(f"[app:{app}]\nlisteners = main\npath = /{app}\ndemo = {demo}\n" for app in APPS)
    return make_config(sections)


class DemoTests(TestCase):
    def test_every_app_serves_its_demo_page(self):
        """With demo = yes each app serves an HTML page at <mount>/demo and the shared script beside it."""
        h = Harness(config("yes")).start()
        for app in APPS:
            status, headers, body = h.http("GET", f"/{app}/demo")
            self.assertEqual(status, 200, app)
            self.assertIn("text/html", headers["content-type"])
            # gameroom's demo is built on the client library the app serves; the others share one script
            self.assertIn(b"/client.js`)" if app == "gameroom" else b'<script src="demo/common.js">', body)
            status, headers, body = h.http("GET", f"/{app}/demo/common.js")
            self.assertEqual(status, 200)
            self.assertIn(b"function connect", body)

    def test_demo_off_by_default(self):
        """Without demo = yes there is no demo page."""
        h = Harness(config("no")).start()
        for app in APPS:
            self.assertIn(h.http("GET", f"/{app}/demo")[0], (404, 426), app)
