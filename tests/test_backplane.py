"""
The Redis backplane's parts that need no Redis: URL parsing, the [bus] section, the message codec,
the bounded publish queue while Redis is away, readiness, and the wikispeedruns group's version order.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from relayd import config
from relayd.apps.wikispeedruns.core import Group, RosterUpdate, Waiter, WikiSpeedruns
from relayd.apps.wikispeedruns.roster import MemoryRoster, Roster
from relayd.backplane import codec
from relayd.backplane.redisbus import RedisBus
from relayd.backplane.target import BadRedisURL, parse_redis_url
from relayd.bus import MemoryBus
from relayd.config import ConfigError
from relayd.metrics import Metrics
from relayd.ws.frames import Frame

BASE = """
[listener:main]
endpoint = tcp:8080:interface=127.0.0.1
[app:testee]
listeners = main
path = /echo
"""


class RedisURLTests(TestCase):
    def test_parts(self):
        """Host, port, database, TLS, user and a percent-encoded password come out of the URL; the description hides the password."""
        target = parse_redis_url("rediss://relayd:s%23cret@redis.internal:6380/3")
        self.assertEqual(
            (target.host, target.port, target.db, target.tls, target.username, target.password),
            ("redis.internal", 6380, 3, True, "relayd", "s#cret"),
        )
        self.assertEqual(target.describe(), "rediss://redis.internal:6380/3")
        self.assertNotIn("cret", repr(target))

    def test_defaults(self):
        """redis://host means port 6379, Redis's default database, no TLS, no credentials."""
        target = parse_redis_url("redis://127.0.0.1")
        self.assertEqual((target.port, target.db, target.tls, target.password), (6379, None, False, None))

    def test_bad_urls(self):
        """Another scheme, no host, a path that is not a database number or an unknown parameter are refused."""
        for url in ("http://h", "redis://", "redis://h/zero", "redis://h/0?timeout=1", "redis://h/0?ca=/x.pem"):
            with self.assertRaises(BadRedisURL, msg=url):
                parse_redis_url(url)


class BusConfigTests(TestCase):
    def test_memory_is_the_default(self):
        """Without a [bus] section fan-out stays in memory."""
        self.assertEqual(config.loads(BASE, path="x.ini").bus.backend, "memory")

    def test_redis_needs_a_url(self):
        """backend = redis without a url, or with a bad one, is a located config error."""
        with self.assertRaises(ConfigError) as caught:
            config.loads(BASE + "[bus]\nbackend = redis\n", path="x.ini")
        self.assertEqual(str(caught.exception), "x.ini: [bus] url: backend = redis needs the url of the Redis server")
        with self.assertRaises(ConfigError) as caught:
            config.loads(BASE + "[bus]\nbackend = redis\nurl = http://h\n", path="x.ini")
        self.assertIn("[bus] url: the scheme must be redis://", str(caught.exception))

    def test_url_without_redis_is_refused(self):
        """A url with the memory backend is a mistake worth saying, not a setting silently ignored."""
        with self.assertRaises(ConfigError):
            config.loads(BASE + "[bus]\nurl = redis://h\n", path="x.ini")

    def test_apps_without_shared_state_are_refused(self):
        """An app that keeps its rooms per process cannot run with backend = redis: start-up says which."""
        from relayd.apps.base import AppSpec
        from relayd.apps.registry import APPS

        APPS["solo"] = AppSpec(name="solo", build=lambda ctx: None)
        self.addCleanup(APPS.pop, "solo")
        text = BASE + "[bus]\nbackend = redis\nurl = redis://h\n[app:solo]\nlisteners = main\npath = /solo\n"
        with self.assertRaises(ConfigError) as caught:
            config.loads(text, path="x.ini")
        self.assertIn("[app:solo]: does not share its state across nodes yet", str(caught.exception))

    def test_every_shipped_app_runs_on_several_nodes(self):
        """Each of the five apps (and the echo app) shares its state, so a config may use them all with redis."""
        text = BASE + "[bus]\nbackend = redis\nurl = redis://h\n" + "".join(
            f"[app:{name}]\nlisteners = main\npath = /{name}\n"
            for name in ("wikispeedruns", "clicker", "groovejet", "gameroom", "carparty"))
        self.assertEqual(len(config.loads(text, path="x.ini").apps), 6)

    def test_redis_config(self):
        """backend = redis keeps the parsed URL and the tuning keys."""
        loaded = config.loads(BASE + "[bus]\nbackend = redis\nurl = redis://h:7000/1\nqueue_limit = 50\n", path="x.ini")
        self.assertEqual((loaded.bus.redis.port, loaded.bus.redis.db, loaded.bus.queue_limit), (7000, 1, 50))


class CodecTests(TestCase):
    def test_frames_and_roster_updates_round_trip(self):
        """Text and binary frames and roster updates come out of the codec as they went in."""
        for message in (Frame.text("refresh"), Frame(b"\x00\xff", True)):
            back = codec.decode(codec.encode(message))
            self.assertEqual((back.payload, back.is_binary), (message.payload, message.is_binary))
        update = RosterUpdate.of(Roster(2**40, ("ann", "also ann")))
        back = codec.decode(codec.encode(update))
        self.assertEqual((back.version, back.frame.payload), (2**40, b'{"type":"update","users":["ann","also ann"]}'))

    def test_unknown_types_and_tags(self):
        """A type nobody registered cannot be encoded; bytes with an unknown tag cannot be decoded."""
        with self.assertRaises(codec.Unrelayable):
            codec.encode(object())
        with self.assertRaises(ValueError):
            codec.decode(b"?junk")


def offline_bus(queue_limit: int = 3) -> tuple[RedisBus, Metrics]:
    """A RedisBus whose Redis never answers: MemoryReactorClock records the connection attempt and nothing more."""
    metrics = Metrics()
    reactor = MemoryReactorClock()
    bus = RedisBus(parse_redis_url("redis://127.0.0.1:1"), clock=reactor, metrics=metrics, queue_limit=queue_limit)
    return bus, metrics


def sample(metrics: Metrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class OfflineBusTests(TestCase):
    def test_same_node_delivery_without_redis(self):
        """With Redis away a publish still reaches this node's subscribers, at once and in order."""
        bus, _ = offline_bus()
        got = []
        bus.subscribe("c", got.append)
        for text in ("one", "two"):
            self.assertEqual(bus.publish("c", Frame.text(text)), 1)
        self.assertEqual([f.payload for f in got], [b"one", b"two"])

    def test_queue_is_bounded_and_drops_are_counted(self):
        """Beyond queue_limit the oldest waiting messages are dropped, counted by reason and gauged."""
        bus, metrics = offline_bus(queue_limit=3)
        for n in range(5):
            bus.publish("c", Frame.text(str(n)))
        self.assertEqual([payload for _, payload in bus.pending], [bus.node_id + b"t" + str(n).encode() for n in (2, 3, 4)])
        self.assertEqual(sample(metrics, "relayd_bus_dropped_total", reason="queue_full"), 2)
        self.assertEqual(sample(metrics, "relayd_bus_queued"), 3)

    def test_readiness_names_the_unreachable_redis(self):
        """problems() names the Redis and both connections while it is away; the up gauge is 0."""
        bus, metrics = offline_bus()
        self.assertEqual(bus.problems(), ["bus: redis redis://127.0.0.1:1/0 unreachable (publisher, subscriber)"])
        self.assertEqual(sample(metrics, "relayd_bus_up"), 0)

    def test_unrelayable_messages_stay_local(self):
        """A message type that cannot cross nodes is still delivered here, and its drop across nodes is counted."""
        bus, metrics = offline_bus()
        got = []
        bus.subscribe("c", got.append)
        marker = object()
        self.assertEqual(bus.publish("c", marker), 1)
        self.assertEqual(got, [marker])
        self.assertEqual(sample(metrics, "relayd_bus_dropped_total", reason="unrelayable"), 1)
        self.assertEqual(list(bus.pending), [])

    def test_echo_of_own_messages_is_ignored(self):
        """A message Redis hands back to the node that published it is not delivered twice."""
        bus, _ = offline_bus()
        got = []
        bus.subscribe("c", got.append)
        bus._arrived(b"relayd:bus:c", bus.node_id + b"tmine")
        bus._arrived(b"relayd:bus:c", b"0123abcd" + b"ttheirs")
        self.assertEqual([f.payload for f in got], [b"theirs"])

    def test_undecodable_message_is_counted_not_delivered(self):
        """Bytes from another node that no codec knows are dropped with a count, not handed to subscribers."""
        bus, metrics = offline_bus()
        got = []
        bus.subscribe("c", got.append)
        bus._arrived(b"relayd:bus:c", b"0123abcd" + b"?what")
        self.assertEqual(got, [])
        self.assertEqual(sample(metrics, "relayd_bus_dropped_total", reason="undecodable"), 1)


class GroupOrderTests(TestCase):
    def test_older_roster_updates_are_dropped(self):
        """A node that hears roster versions out of order keeps the newest names."""
        group = Group("[1,2]")
        got = []
        waiter = Waiter(group, "m", lambda frame, latest=None: got.append(frame), False, None)
        waiter.name = "ann"
        group.waiters.append(waiter)
        group.deliver(RosterUpdate.of(Roster(3, ("ann", "bob"))))
        group.deliver(RosterUpdate.of(Roster(2, ("ann",))))
        group.deliver(RosterUpdate.of(Roster(4, ("ann", "bob", "cy"))))
        self.assertEqual([f.payload for f in got], [
            b'{"type":"update","users":["ann","bob"]}', b'{"type":"update","users":["ann","bob","cy"]}',
        ])

    def test_joiner_gets_the_newer_roster_when_its_own_answer_is_stale(self):
        """A join answered after a newer roster arrived still gives the newcomer the latest names, once."""
        class LateRoster(MemoryRoster):
            def join(self, group, member, wanted):
                self.pending = defer.Deferred()
                return self.pending

        bus, roster = MemoryBus(), LateRoster()
        core = WikiSpeedruns(bus, roster=roster)
        got = []
        joined = core.wait_start({"user": "ann", "lobby_id": 1, "prompt_id": 2}, lambda frame, latest=None: got.append(frame), now=0)
        channel = core.groups["[1,2]"].channel
        bus.publish(channel, RosterUpdate.of(Roster(5, ("bob", "ann"))))  # from another node, before ann's answer
        self.assertEqual(got, [])  # not in the group yet
        roster.pending.callback(("ann", Roster(4, ("bob", "ann"))))
        self.assertEqual([f.payload for f in got], [b'{"type":"update","users":["bob","ann"]}'])
        self.assertEqual(self.successResultOf(joined).name, "ann")


class _Node:
    """What Pipes needs of a cluster: this node's id."""

    def __init__(self, node_id: str):
        self.node_id = node_id


class _Listening:
    """A room's session on the owner: once its client joins, listens to the room's channels and greets it."""

    unavailable = None

    def __init__(self, bus, conn, channels):
        self.bus, self.conn, self.channels = bus, conn, channels
        self.subscriptions = []

    def opened(self):
        pass

    def received(self, payload, is_binary):
        self.subscriptions = [self.conn.listen(self.bus, channel) for channel in self.channels]
        self.conn.send(Frame.text("welcome"))

    def closed(self):
        pass

    def report(self, error):
        pass


class PipeFollowTests(TestCase):
    """
    One MemoryBus stands in for Redis: what either node publishes reaches every subscriber, in publish
    order, as Redis delivers one publisher's messages to one subscriber connection.
    """

    def pipe(self, channels, follows):
        from relayd.backplane.pipes import Pipes

        self.bus = bus = MemoryBus()
        self.published = []
        publish = bus.publish
        bus.publish = lambda channel, message: (self.published.append(channel), publish(channel, message))[1]
        metrics = Metrics().for_app("testee")
        self.sessions = []

        def open_session(end, body):
            session = _Listening(bus, end, channels)
            self.sessions.append(session)
            return session

        Pipes(bus, _Node("a"), "t", metrics, open_session)
        client = Pipes(bus, _Node("b"), "t", metrics, lambda end, body: None)
        got = []

        class Client:
            client_address = "192.0.2.1"

            def send(self, frame, latest=None):
                got.append(frame.payload.decode())

            def close(self, code, reason=""):
                got.append(f"closed {code}")

        pipe = client.connect(Client(), "a", "room", {}, follows=follows)
        self.bus.publish("room@a", Frame.text("before the client joined"))
        pipe.forward(b"join")
        return pipe, got

    def test_a_followed_channel_reaches_the_client_once_from_its_own_node(self):
        """
        A broadcast the client's node follows reaches the client once and never crosses the pipe;
        only what the owner published after the room's session began to listen reaches it, after the
        greeting the session sent then; when the session stops listening, nothing more arrives.
        """
        pipe, got = self.pipe(["room@a"], ["room@a"])
        self.assertEqual(got, ["welcome"])
        self.published.clear()
        self.bus.publish("room@a", Frame.text("master 1"))
        self.assertEqual(got, ["welcome", "master 1"])
        self.assertEqual(self.published, ["room@a"], "the broadcast crossed the pipe as well")
        self.sessions[0].subscriptions[0].cancel()
        self.bus.publish("room@a", Frame.text("master 2"))
        self.assertEqual(got, ["welcome", "master 1"])

    def test_a_channel_the_node_does_not_follow_crosses_the_pipe(self):
        """Listening to a channel the client's node does not follow forwards its messages through the pipe, once."""
        pipe, got = self.pipe(["room@a", "player@a"], ["room@a"])
        self.bus.publish("player@a", Frame.text("to one player"))
        self.bus.publish("room@c", Frame.text("another node's room of that id"))
        self.assertEqual(got, ["welcome", "to one player"])

    def test_a_closed_pipe_stops_following(self):
        """Once the client's pipe is closed, the channels it followed reach the client no more."""
        pipe, got = self.pipe(["room@a"], ["room@a"])
        pipe.closed()
        self.bus.publish("room@a", Frame.text("master 1"))
        self.assertEqual(got, ["welcome"])
        self.assertEqual(self.bus.subscribers("room@a"), 0)


class _FencingCluster:
    """A Cluster whose Redis answers when the test says: each call and eval waits in `sent`."""

    node_timeout = 9.0
    node_id = "node-a"
    up = True

    def __init__(self):
        self.sent = []

    def key(self, *parts):
        return ":".join(("relayd",) + parts)

    def call(self, *command):
        d = defer.Deferred()
        self.sent.append((command, d))
        return d

    def eval(self, script, keys, args):
        d = defer.Deferred()
        self.sent.append((("EVAL", *keys), d))
        return d

    def when_reconnected(self, callback):
        pass


class LeaseFencingTests(TestCase):
    def _leases(self):
        from twisted.internet.task import Clock

        from relayd.backplane.leases import Leases

        clock, cluster, lost = Clock(), _FencingCluster(), []
        leases = Leases(cluster, "gameroom:room", clock=clock, lost=lost.append)
        leases.startService()

        def stop():
            stopped = leases.stopService()
            for _, d in cluster.sent:  # the releases it sent, answered
                if not d.called:
                    d.callback(1)
            return stopped

        self.addCleanup(stop)
        return clock, cluster, leases, lost

    def test_a_node_cut_off_stops_acting_as_owner_before_its_lease_can_expire(self):
        """
        A lease trusted for half of node_timeout from when its last successful renewal was sent: cut
        off from Redis, the node gives the room up (lost) at the renewal tick after that, which is
        before Redis can expire the lease (node_timeout after that renewal reached it) and another
        node take it.
        """
        clock, cluster, leases, lost = self._leases()
        claim = leases.claim("r1")
        clock.advance(0.5)
        cluster.sent.pop()[1].callback(b"OK")  # SET NX answered half a second after it was sent
        self.assertTrue(self.successResultOf(claim))
        self.assertEqual(leases.valid_until["r1"], 4.5)
        clock.advance(2.5)  # t = 3, the renewal tick: renewed, answered at once
        command, d = cluster.sent.pop()
        d.callback([1])
        self.assertEqual(leases.valid_until["r1"], 7.5)
        cluster.up = False  # cut off from Redis from now on
        clock.advance(3)  # t = 6: still trusted, nothing sent
        self.assertEqual((lost, cluster.sent), ([], []))
        clock.advance(3)  # t = 9: past 7.5, given up
        self.assertEqual(lost, ["r1"])
        self.assertNotIn("r1", leases.held)
        self.assertLess(clock.seconds(), 3 + cluster.node_timeout)  # Redis keeps the lease at least until 12

    def test_a_renewal_answered_late_counts_from_when_it_was_sent(self):
        """A renewal whose answer is slow extends the lease from its send time, not its answer's."""
        clock, cluster, leases, lost = self._leases()
        claim = leases.claim("r1")
        cluster.sent.pop()[1].callback(b"OK")
        self.successResultOf(claim)
        clock.advance(3)
        command, d = cluster.sent.pop()
        clock.advance(2.9)  # answered 2.9 s after it was sent
        d.callback([1])
        self.assertEqual(leases.valid_until["r1"], 3 + 4.5)
        self.assertEqual(lost, [])
