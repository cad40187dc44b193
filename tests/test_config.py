"""Configuration: validation names file, section and key; endpoints; origins; the shipped files."""

import os

from twisted.trial.unittest import TestCase

from relayd import config
from relayd.config import ConfigError
from relayd.config.endpoint import parse_endpoint
from relayd.config.schema import BadValue
from relayd.ws.origin import OriginPolicy
from relayd.ws.ratelimit import TokenBucket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GOOD = """
[relayd]
state_dir = var/x
[listener:main]
endpoint = tcp:8080:interface=127.0.0.1
[app:testee]
listeners = main
path = /echo
"""


class ValidationTests(TestCase):
    def assertConfigError(self, text, expected):
        with self.assertRaises(ConfigError) as caught:
            config.loads(text, path="my.ini")
        self.assertEqual(str(caught.exception), expected)

    def test_good_config(self):
        """A valid config loads with defaults filled in."""
        loaded = config.loads(GOOD, path="my.ini")
        self.assertEqual(loaded.apps["testee"].path, "/echo")
        self.assertEqual(loaded.limits.max_message_size, 65536)
        self.assertEqual(loaded.listeners["main"].endpoint.description, "tcp:8080:interface=127.0.0.1:backlog=1024")

    def test_unknown_section(self):
        """An unknown section is named."""
        self.assertConfigError(GOOD + "[frobnicate]\n", "my.ini: [frobnicate]: unknown section (expected [relayd], [limits], [bus], [listener:NAME] or [app:NAME])")

    def test_unknown_key(self):
        """An unknown key is named with its section."""
        with self.assertRaises(ConfigError) as caught:
            config.loads(GOOD.replace("state_dir", "stat_dir"), path="my.ini")
        self.assertTrue(str(caught.exception).startswith("my.ini: [relayd] stat_dir: unknown key"))

    def test_missing_required_key(self):
        """A missing required key is named."""
        self.assertConfigError(GOOD.replace("path = /echo\n", ""), "my.ini: [app:testee] path: missing required key")

    def test_bad_value(self):
        """A value that does not parse is named with what is wrong."""
        self.assertConfigError(GOOD + "[limits]\nrate_limit = fast\n", "my.ini: [limits] rate_limit: 'fast' is not a number")

    def test_two_apps_on_one_path(self):
        """Two mounts on one path of one listener are refused."""
        from relayd.apps import registry
        from relayd.apps.base import AppSpec

        registry.APPS["testee2"] = AppSpec(name="testee2", build=registry.APPS["testee"].build)
        self.addCleanup(registry.APPS.pop, "testee2")
        self.assertConfigError(
            GOOD + "[app:testee2]\nlisteners = main\npath = /echo/\n",
            "my.ini: [app:testee2] path: /echo on listener main is already the mount path of app testee",
        )

    def test_unknown_listener(self):
        """An app naming a listener that does not exist is refused."""
        self.assertConfigError(GOOD.replace("listeners = main", "listeners = side"), "my.ini: [app:testee] listeners: no [listener:side] section")

    def test_unreadable_tls_file(self):
        """A TLS file that cannot be read is named."""
        with self.assertRaises(ConfigError) as caught:
            config.loads(GOOD.replace("tcp:8080", "ssl:8443:privateKey=/nonexistent/key.pem:certKey=/nonexistent/cert.pem"), path="my.ini")
        self.assertIn("[listener:main] endpoint: cannot read the certificate file /nonexistent/cert.pem", str(caught.exception))

    def test_unsupported_endpoint(self):
        """Endpoint types other than tcp, ssl, unix and systemd are refused."""
        with self.assertRaises(ConfigError) as caught:
            config.loads(GOOD.replace("tcp:8080", "udp:8080"), path="my.ini")
        self.assertIn("[listener:main] endpoint: 'udp' endpoints are not supported", str(caught.exception))

    def test_missing_file(self):
        """A config file that does not exist is reported in one line."""
        with self.assertRaises(ConfigError) as caught:
            config.load("/nonexistent/relayd.ini")
        self.assertEqual(str(caught.exception), "/nonexistent/relayd.ini: cannot read the file: No such file or directory")

    def test_app_limit_override(self):
        """An app section may override any limit; others keep the [limits] value."""
        loaded = config.loads(GOOD + "max_message_size = 1M\n[limits]\nrate_limit = 7\n", path="my.ini")
        self.assertEqual(loaded.apps["testee"].limits.max_message_size, 1024 * 1024)
        self.assertEqual(loaded.apps["testee"].limits.rate_limit, 7)

    def test_shipped_configs_validate(self):
        """etc/relayd.ini and every example validate."""
        paths = [os.path.join(ROOT, "etc", "relayd.ini")]
        examples = os.path.join(ROOT, "etc", "examples")
        paths += [os.path.join(examples, name) for name in sorted(os.listdir(examples)) if name.endswith(".ini")]
        cwd = os.getcwd()
        os.chdir(ROOT)  # example TLS paths are relative to the checkout
        self.addCleanup(os.chdir, cwd)
        for path in paths:
            if path.endswith("systemd.ini"):
                # production TLS paths: validate the rest against the example certificate
                with open(path) as f:
                    text = f.read()
                for name, example in (("privkey.pem", "localhost.key"), ("cert.pem", "localhost.crt"), ("chain.pem", "localhost.crt")):
                    text = text.replace(f"/etc/relayd/tls/{name}", f"etc/examples/tls/{example}")
                config.loads(text, path=path)
            else:
                config.load(path)

    def test_shipped_config_contract(self):
        """The shipped config serves on tcp:8080 on loopback with health and metrics."""
        loaded = config.load(os.path.join(ROOT, "etc", "relayd.ini"))
        main = loaded.listeners["main"]
        self.assertTrue(main.endpoint.description.startswith("tcp:8080:interface=127.0.0.1"))
        self.assertTrue(main.health and main.metrics)
        self.assertEqual(loaded.daemon.state_dir, "var/relayd")


class EndpointTests(TestCase):
    def test_backlog_default(self):
        """A listen backlog of 1024 is added unless one is given."""
        self.assertEqual(parse_endpoint("tcp:80").description, "tcp:80:backlog=1024")
        self.assertEqual(parse_endpoint("tcp:80:backlog=4096").description, "tcp:80:backlog=4096")
        self.assertEqual(parse_endpoint("unix:/run/relayd.sock").description, "unix:/run/relayd.sock:backlog=1024")

    def test_ssl_is_split(self):
        """An ssl: endpoint becomes tcp: plus the TLS files relayd serves itself."""
        ep = parse_endpoint("ssl:443:interface=0.0.0.0:privateKey=k.pem:certKey=c.pem:extraCertChain=chain.pem")
        self.assertEqual(ep.description, "tcp:443:interface=0.0.0.0:backlog=1024")
        self.assertEqual((ep.tls.key, ep.tls.cert, ep.tls.chain), ("k.pem", "c.pem", "chain.pem"))

    def test_systemd(self):
        """systemd: endpoints need an index or name and get no backlog."""
        self.assertEqual(parse_endpoint("systemd:domain=INET:index=0").description, "systemd:domain=INET:index=0")
        with self.assertRaises(BadValue):
            parse_endpoint("systemd:domain=INET")

    def test_bad_port(self):
        """A port that is not a number is refused."""
        with self.assertRaises(BadValue):
            parse_endpoint("tcp:http")


class OriginTests(TestCase):
    def test_default_port_normalisation(self):
        """An entry without port matches the browser's portless origin and the explicit default port."""
        policy = OriginPolicy(["https://game.example"])
        self.assertTrue(policy.allows("https://game.example"))
        self.assertTrue(policy.allows("https://game.example:443"))
        self.assertFalse(policy.allows("http://game.example"))
        self.assertFalse(policy.allows("https://game.example:444"))

    def test_wildcards(self):
        """Host wildcards match subdomains only; a port wildcard matches any port."""
        policy = OriginPolicy(["https://*.game.example", "http://localhost:*"])
        self.assertTrue(policy.allows("https://a.game.example"))
        self.assertFalse(policy.allows("https://game.example"))
        self.assertFalse(policy.allows("https://evilgame.example"))
        self.assertTrue(policy.allows("http://localhost:5173"))

    def test_no_origin_and_null(self):
        """Non-browser clients without Origin pass; the opaque origin null only when listed."""
        policy = OriginPolicy(["https://game.example"])
        self.assertTrue(policy.allows(None))
        self.assertFalse(policy.allows("null"))
        self.assertTrue(OriginPolicy(["null"]).allows("null"))
        self.assertFalse(policy.allows("not a url"))


class TokenBucketTests(TestCase):
    def test_burst_then_rate(self):
        """The bucket allows its burst at once and then refills at its rate."""
        bucket = TokenBucket(rate=2, burst=3, now=0)
        self.assertEqual([bucket.take(0) for _ in range(4)], [True, True, True, False])
        self.assertTrue(bucket.take(0.5))
        self.assertFalse(bucket.take(0.5))


class DocumentationTests(TestCase):
    def test_every_key_is_documented(self):
        """Every config key is in docs/configuration.md, and every app option in its protocol document."""
        from relayd.apps.registry import APPS
        from relayd.config import model

        with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
            text = f.read()
        for options in (model.DAEMON_OPTIONS, model.LISTENER_OPTIONS, model.LIMIT_OPTIONS, model.BUS_OPTIONS,
                        model.APP_COMMON_OPTIONS):
            for key in options:
                self.assertIn(f"`{key}`", text, key)
        for name, spec in APPS.items():
            if not spec.options:
                continue
            with open(os.path.join(ROOT, "docs", "protocols", f"{name}.md")) as f:
                doc = f.read()
            for key in spec.options:
                self.assertIn(f"`{key}`", doc, f"{name}: {key}")
