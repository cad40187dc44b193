"""Configuration: validation names file, section and key; endpoints; origins; the shipped files."""

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from relayd import config
from relayd.config import ConfigError
from relayd.config.endpoint import parse_endpoint
from relayd.config.schema import BadValue
from relayd.ws.origin import OriginPolicy
from relayd.config.model import Rate
from relayd.ws.ratelimit import Budget

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


LISTENER_ONLY = "[relayd]\nstate_dir = var/x\n[listener:main]\nendpoint = tcp:8080:interface=127.0.0.1\n"


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

    def test_precedence_app_over_limits_over_app_default(self):
        """[app:NAME] beats [limits], which beats the app's own default, which beats the daemon's."""
        base = LISTENER_ONLY + "[app:carparty]\nlisteners = main\npath = /carparty\n"
        shipped = config.loads(base, path="my.ini").apps["carparty"].limits
        self.assertEqual(shipped.max_message_size, 1024 * 1024)  # the app's documented default
        daemon_wide = config.loads(base + "[limits]\nmax_message_size = 2M\nbyte_burst = 8M\n", path="my.ini")
        self.assertEqual(daemon_wide.apps["carparty"].limits.max_message_size, 2 * 1024 * 1024)
        per_app = config.loads(
            base + "max_message_size = 512K\n[limits]\nmax_message_size = 2M\nbyte_burst = 8M\n", path="my.ini"
        )
        self.assertEqual(per_app.apps["carparty"].limits.max_message_size, 512 * 1024)

    def test_roles_have_their_own_rates(self):
        """carparty's game server sends under its own rate, which [limits] does not change and its section may."""
        base = LISTENER_ONLY + "[app:carparty]\nlisteners = main\npath = /carparty\n"
        limits = config.loads(base + "[limits]\nrate_limit = 7\n", path="my.ini").apps["carparty"].limits
        self.assertEqual(limits.rate().rate_limit, 7)
        self.assertEqual(limits.rate("server").rate_limit, 3000)
        limits = config.loads(base + "server_rate_limit = 50\n", path="my.ini").apps["carparty"].limits
        self.assertEqual(limits.rate("server").rate_limit, 50)
        self.assertEqual(limits.rate("server").rate_burst, 6000)

    def test_byte_burst_below_message_size_refused(self):
        """A byte burst smaller than the largest message would refuse that message forever: a config error."""
        self.assertConfigError(
            GOOD + "max_message_size = 1M\nbyte_burst = 64K\n",
            "my.ini: [app:testee] byte_burst: 65536 is below max_message_size (1048576): the largest message could never be sent",
        )

    def test_retired_key_names_its_replacement(self):
        """trust_x_forwarded_for is gone; a config that still sets it is told what replaced it."""
        self.assertConfigError(
            GOOD + "[limits]\ntrust_x_forwarded_for = 1\n",
            "my.ini: [limits] trust_x_forwarded_for: no longer exists: replaced by trusted_proxies in "
            "[listener:NAME] (addresses and CIDRs of the proxies)",
        )

    def test_trusted_proxies_parsed(self):
        """trusted_proxies takes addresses and CIDRs; anything else is refused in one line."""
        loaded = config.loads(GOOD.replace("[app:testee]", "trusted_proxies = 10.0.0.0/8, ::1\n[app:testee]"), path="my.ini")
        self.assertEqual([str(n) for n in loaded.listeners["main"].trusted_proxies], ["10.0.0.0/8", "::1/128"])
        self.assertConfigError(
            GOOD.replace("[app:testee]", "trusted_proxies = nginx\n[app:testee]"),
            "my.ini: [listener:main] trusted_proxies: 'nginx' is not an IP address or CIDR network",
        )

    def test_endpoint_typo_refused_by_twisted_parser(self):
        """An endpoint keyword Twisted does not know fails the check, naming the keyword."""
        self.assertConfigError(
            GOOD.replace("endpoint = tcp:8080:interface=127.0.0.1", "endpoint = tcp:8080:interfce=127.0.0.1"),
            "my.ini: [listener:main] endpoint: 'tcp:8080:interfce=127.0.0.1:backlog=1024': unknown option 'interfce'",
        )

    def test_haproxy_endpoint_needs_trusted_proxies(self):
        """A haproxy: listener believes the PROXY header of its proxies only, so they must be listed."""
        self.assertConfigError(
            GOOD.replace("endpoint = tcp:8080:interface=127.0.0.1", "endpoint = haproxy:tcp:8080:interface=127.0.0.1"),
            "my.ini: [listener:main] trusted_proxies: a haproxy: endpoint believes the PROXY header of the proxies "
            "listed here: list them",
        )

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


class BudgetTests(TestCase):
    def test_burst_then_rate(self):
        """The message budget allows its burst at once and then refills at its rate."""
        budget = Budget(Rate(2, 3, 0, 1), now=0)
        self.assertEqual([budget.take(0, 10) for _ in range(4)], [True, True, True, False])
        self.assertTrue(budget.take(0.5, 10))
        self.assertFalse(budget.take(0.5, 10))

    def test_bytes_are_a_budget_of_their_own(self):
        """A few large messages run out the byte budget long before the message budget."""
        budget = Budget(Rate(100, 200, 1000, 3000), now=0)
        self.assertEqual([budget.take(0, 1000) for _ in range(4)], [True, True, True, False])
        self.assertFalse(budget.take(0.5, 1000))
        self.assertTrue(budget.take(1.0, 1000))

    def test_a_larger_role_adds_its_difference(self):
        """A connection that becomes a game server gets the larger burst at once, and keeps what it spent."""
        budget = Budget(Rate(10, 5, 0, 1), now=0)
        for _ in range(5):
            self.assertTrue(budget.take(0, 1))
        self.assertFalse(budget.take(0, 1))
        budget.use(Rate(100, 50, 0, 1))
        self.assertEqual(sum(budget.take(0, 1) for _ in range(60)), 45)


    def test_whole_numbers_decide_as_the_float_bucket_does(self):
        """
        Refilled once per read and spent in whole numbers, the budget allows exactly the messages a
        bucket of fractional tokens refilled at every message would, for any rates, sizes and timing.
        """

        class FloatBucket:  # the budget as it is defined: fractional tokens, refilled at every message
            def __init__(self, rate):
                self.rate, self.stamp = rate, 0.0
                self.messages, self.bytes = float(rate.rate_burst), float(rate.byte_burst)

            def take(self, now, size):
                elapsed, self.stamp = now - self.stamp, now
                if self.rate.rate_limit:
                    self.messages = min(self.rate.rate_burst, self.messages + elapsed * self.rate.rate_limit)
                if self.rate.byte_rate:
                    self.bytes = min(self.rate.byte_burst, self.bytes + elapsed * self.rate.byte_rate)
                if (self.rate.rate_limit and self.messages < 1) or (self.rate.byte_rate and self.bytes < size):
                    return False
                if self.rate.rate_limit:
                    self.messages -= 1
                if self.rate.byte_rate:
                    self.bytes -= size
                return True

        reads = st.lists(st.tuples(st.floats(0, 2), st.lists(st.integers(0, 3000), max_size=12)), max_size=40)
        rates = st.builds(Rate, st.sampled_from([0, 0.5, 3, 10, 33.3]), st.integers(1, 20),
                          st.sampled_from([0, 100, 1000, 7777]), st.integers(1, 9000))

        @settings(max_examples=400, derandomize=True, deadline=None)
        @given(rates, reads)
        def agree(rate, reads):
            budget, reference, now = Budget(rate, now=0.0), FloatBucket(rate), 0.0
            for gap, sizes in reads:
                now += gap
                budget.refill(now)
                for size in sizes:
                    self.assertEqual(budget.spend(size), reference.take(now, size), (rate, now, size))

        agree()

    def test_spending_nothing_when_refused(self):
        """A message refused for its bytes spends no message either, so a smaller one still fits."""
        budget = Budget(Rate(10, 2, 1000, 1000), now=0)
        self.assertFalse(budget.spend(1500))
        self.assertTrue(budget.spend(600))
        self.assertTrue(budget.spend(400))
        self.assertFalse(budget.spend(1))


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
