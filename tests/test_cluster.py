"""
Several relayd nodes on one private redis-server (tests/redis.py), each the real plugin's service on
127.0.0.1 port 0: what crosses nodes, and what happens when Redis goes away and comes back.
"""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from tests.live import Daemon, later
from tests.redis import RedisServer


def node_config(redis_url: str, **bus) -> str:
    options = "".join(f"{key} = {value}\n" for key, value in bus.items())
    return f"""
[listener:main]
endpoint = tcp:0:interface=127.0.0.1

[bus]
backend = redis
url = {redis_url}
max_backoff = 0.2
{options}
[app:wikispeedruns]
listeners = main
path = /ws

[app:carparty]
listeners = main
path = /carparty
"""


@defer.inlineCallbacks
def until(condition, seconds: float = 10.0, what: str = "condition"):
    """Wait on the real reactor for something another process does; fail after `seconds`."""
    for _ in range(int(seconds / 0.02)):
        value = yield defer.maybeDeferred(condition)
        if value:
            return value
        yield later(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def bus_up(daemon: Daemon) -> bool:
    return not daemon.service.bus.problems()


@defer.inlineCallbacks
def get(daemon: Daemon, path: str):
    response = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{daemon.port()}{path}".encode())
    body = yield readBody(response)
    return response.code, body.decode()


class ClusterTestCase(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def start_cluster(self, nodes: int = 2, **bus):
        self.redis = RedisServer(self)
        yield self.redis.start()
        self.nodes = [Daemon(self, node_config(self.redis.url, **bus)) for _ in range(nodes)]
        for node in self.nodes:
            yield until(lambda node=node: bus_up(node), what="the bus to connect")

    @defer.inlineCallbacks
    def subscribed(self, node: Daemon, message: str):
        """A leaderboard subscriber on node, once Redis has its subscription."""
        client = yield node.connect("/ws")
        client.send_text(message)
        bus = node.service.bus
        # the subscription reaches Redis asynchronously; PUBSUB NUMSUB says when it is there
        channel = (bus.prefix + "wikispeedruns:leaderboard:[1,2]").encode()
        yield until(
            lambda: bus.publisher.protocol.execute_command("PUBSUB", "NUMSUB", channel).addCallback(
                lambda reply: reply[1] >= 1),
            what="the subscription to reach redis",
        )
        return client


LEADERBOARD = '{"type": "leaderboard", "lobby_id": 1, "prompt_id": 2}'
UPDATE = '{"type": "leaderboard_update", "lobby_id": 1, "prompt_id": 2}'


class FanOutAcrossNodes(ClusterTestCase):
    @defer.inlineCallbacks
    def test_refresh_reaches_subscribers_on_every_node(self):
        """A leaderboard_update sent to one node reaches the leaderboard subscribers on every node, once each."""
        yield self.start_cluster(3)
        watchers = []
        for node in self.nodes:
            watchers.append((yield self.subscribed(node, LEADERBOARD)))
        trigger = yield self.nodes[1].connect("/ws")
        trigger.send_text(UPDATE)
        for watcher in watchers:
            self.assertEqual((yield watcher.messages_at_least(1)), ["refresh"])
        yield later(0.2)  # a duplicate (the publishing node hearing its own message back) would arrive by now
        self.assertEqual([w.messages for w in watchers], [["refresh"]] * 3)
        for watcher in watchers:
            watcher.sendClose(1000)
            yield watcher.when_closed


class RedisFaults(ClusterTestCase):
    @defer.inlineCallbacks
    def test_node_survives_redis_crash_and_recovers(self):
        """
        Redis killed mid-run: every node stays up, same-node delivery goes on, /readyz says 503 naming
        the bus, and once Redis is back the nodes reconnect on their own and fan out across nodes again.
        """
        yield self.start_cluster(2)
        a, b = self.nodes
        watcher_a = yield self.subscribed(a, LEADERBOARD)
        self.redis.kill()
        yield until(lambda: not bus_up(a) and not bus_up(b), what="the nodes to notice")
        code, body = yield get(a, "/readyz")
        self.assertEqual(code, 503)
        self.assertIn("bus: redis redis://127.0.0.1", body)
        same_node = yield a.connect("/ws")
        same_node.send_text(UPDATE)
        self.assertEqual((yield watcher_a.messages_at_least(1)), ["refresh"])

        yield self.redis.start()
        yield until(lambda: bus_up(a) and bus_up(b), what="the nodes to reconnect")
        code, body = yield get(a, "/readyz")
        self.assertEqual((code, body), (200, "ready\n"))
        # a's subscriptions are back in the new Redis: b's trigger reaches a's watcher
        yield self.subscribed(a, LEADERBOARD)
        trigger = yield b.connect("/ws")
        trigger.send_text(UPDATE)
        messages = yield watcher_a.messages_at_least(2)
        self.assertEqual(messages, ["refresh", "refresh"])
        watcher_a.sendClose(1000)
        yield watcher_a.when_closed


def wait_start(user: str, **extra) -> str:
    return json.dumps({"type": "wait_start", "user": user, "lobby_id": 7, "prompt_id": 1, **extra})


def last_users(client) -> list | None:
    updates = [json.loads(m) for m in client.messages if m.startswith('{"type":"update"')]
    return updates[-1]["users"] if updates else None


class LobbyAcrossNodes(ClusterTestCase):
    @defer.inlineCallbacks
    def join(self, node: Daemon, user: str):
        client = yield node.connect("/ws")
        client.send_text(wait_start(user))
        yield until(lambda: last_users(client) is not None and user in " ".join(last_users(client)),
                    what=f"{user} to be in the group")
        return client

    @defer.inlineCallbacks
    def test_group_spans_nodes(self):
        """
        Waiters of one lobby prompt on two nodes form one group: every update lists all of them in
        join order, a name taken on the other node becomes "also NAME", start reaches both nodes,
        and a leave on one node updates the other.
        """
        yield self.start_cluster(2)
        a, b = self.nodes
        ann = yield self.join(a, "ann")
        bob = yield self.join(b, "bob")
        ann2 = yield self.join(b, "ann")
        for client in (ann, bob, ann2):
            yield until(lambda client=client: last_users(client) == ["ann", "bob", "also ann"],
                        what="every waiter to see all three names")
        ann.send_text('{"type": "start"}')
        for client in (ann, bob, ann2):
            yield until(lambda client=client: '{"type":"start"}' in client.messages, what="start everywhere")
        bob.sendClose(1000)
        yield bob.when_closed
        yield until(lambda: last_users(ann) == ["ann", "also ann"], what="the leave to reach node a")
        for client in (ann, ann2):
            client.sendClose(1000)
            yield client.when_closed

    @defer.inlineCallbacks
    def test_dead_node_members_are_swept(self):
        """The members of a node that dies without leaving vanish from the group within node_timeout."""
        yield self.start_cluster(2, node_timeout=1)
        a, b = self.nodes
        ann = yield self.join(a, "ann")
        bob = yield self.join(b, "bob")
        yield until(lambda: last_users(ann) == ["ann", "bob"], what="ann to see bob")
        # node b dies: its Redis connections and its presence stop as in a crash
        b.service.cluster.stopService = lambda: None
        b.service.cluster._heartbeat.stop()
        yield b.service.bus.stopService()
        yield until(lambda: last_users(ann) == ["ann"], seconds=10, what="bob to be swept")
        for client in (ann, bob):
            client.sendClose(1000)
            yield client.when_closed

    @defer.inlineCallbacks
    def test_groups_survive_a_redis_restart(self):
        """Redis restarted empty: each node writes its waiters again, so a newcomer sees everyone."""
        yield self.start_cluster(2)
        a, b = self.nodes
        ann = yield self.join(a, "ann")
        bob = yield self.join(b, "bob")
        self.redis.kill()
        yield until(lambda: not bus_up(a) and not bus_up(b), what="the nodes to notice")
        refused = yield a.connect("/ws")
        refused.send_text(wait_start("cy"))
        self.assertEqual((yield refused.when_closed), 1013)
        yield self.redis.start()
        yield until(lambda: bus_up(a) and bus_up(b), what="the nodes to reconnect")
        cy = yield self.join(a, "cy")
        yield until(lambda: sorted(last_users(cy)) == ["ann", "bob", "cy"], what="cy to see everyone")
        yield until(lambda: sorted(last_users(bob)) == ["ann", "bob", "cy"], what="bob to see everyone")
        for client in (ann, bob, cy):
            client.sendClose(1000)
            yield client.when_closed


def login(action: str, code: str, client_id: str | None = None) -> str:
    message = {"action": action, "server_code": code}
    if client_id is not None:
        message["client_id"] = client_id
    return json.dumps(message)


class CarPartyAcrossNodes(ClusterTestCase):
    @defer.inlineCallbacks
    def server_and_phones(self, server_node: Daemon, phone_nodes: list, code: str = "SNEK"):
        server = yield server_node.connect("/carparty")
        server.send_text(login("login_server", code))
        yield until(lambda: self._holder(server_node, code), what="the code's lease")
        phones = []
        for n, node in enumerate(phone_nodes):
            phone = yield node.connect("/carparty")
            phone.send_text(login("login_client", code, f"p{n}"))
            phones.append(phone)
        yield server.messages_at_least(len(phones))
        return server, phones

    def _holder(self, node: Daemon, code: str):
        return node.service.cluster.call("EXISTS", node.service.cluster.key("carparty:server", code)).addCallback(
            lambda n: n == 1)

    @defer.inlineCallbacks
    def test_server_and_phones_on_different_nodes(self):
        """
        A game server on one node and phones on the others: connects reach the server, its broadcasts
        reach every phone in order, receiver_id reaches one phone, a phone's frame reaches the server
        stamped with its id, and a disconnect is reported.
        """
        yield self.start_cluster(3)
        a, b, c = self.nodes
        server, (p0, p1) = yield self.server_and_phones(a, [b, c])
        self.assertEqual(sorted(json.loads(m)["client_id"] for m in server.messages), ["p0", "p1"])
        for n in range(20):
            server.send_text(json.dumps({"n": n}))
        server.send_text(json.dumps({"receiver_id": "p1", "only": True}))
        for phone in (p0, p1):
            yield phone.messages_at_least(20)
            self.assertEqual([json.loads(m)["n"] for m in phone.messages[:20]], list(range(20)))
        yield p1.messages_at_least(21)
        yield later(0.1)
        self.assertEqual(len(p0.messages), 20)
        p0.send_text('{"steer": -1, "client_id": "forged"}')
        messages = yield server.messages_at_least(3)
        self.assertEqual(json.loads(messages[2]), {"steer": -1, "client_id": "p0"})
        p0.sendClose(1000)
        yield p0.when_closed
        messages = yield server.messages_at_least(4)
        self.assertEqual(json.loads(messages[3]), {"action": "disconnect", "client_id": "p0"})
        server.sendClose(1000)
        self.assertEqual((yield p1.when_closed), 1000)  # its server left: closed, on another node

    @defer.inlineCallbacks
    def test_code_is_unique_across_nodes(self):
        """A second game server with a code in use on another node is dropped, as on one node."""
        yield self.start_cluster(2)
        a, b = self.nodes
        server, _ = yield self.server_and_phones(a, [])
        rival = yield b.connect("/carparty")
        rival.send_text(login("login_server", "SNEK"))
        yield rival.when_closed
        self.assertEqual(rival.messages, [])  # dropped without a word, as on one node
        # the first server still has its code: a phone on b reaches it
        phone = yield b.connect("/carparty")
        phone.send_text(login("login_client", "SNEK", "p9"))
        messages = yield server.messages_at_least(1)
        self.assertEqual(json.loads(messages[0]), {"action": "connect", "client_id": "p9"})
        server.sendClose(1000)
        yield phone.when_closed

    @defer.inlineCallbacks
    def test_phones_of_a_dead_node_are_closed_and_the_code_freed(self):
        """When the game server's node dies its phones elsewhere are closed within node_timeout, and the code can be taken again."""
        yield self.start_cluster(2, node_timeout=1)
        a, b = self.nodes
        server, (phone,) = yield self.server_and_phones(a, [b])
        a.service.cluster.stopService = lambda: None
        a.apps_keeper = a.service.apps["carparty"].keeper
        a.apps_keeper.leases._renewer.stop()
        a.apps_keeper.leases.stopService = lambda: None
        a.service.cluster._heartbeat.stop()
        yield a.service.bus.stopService()
        self.assertEqual((yield phone.when_closed), 1000)
        again = yield b.connect("/carparty")
        again.send_text(login("login_server", "SNEK"))
        yield until(lambda: "SNEK" in b.service.apps["carparty"].core.servers
                    and b.service.apps["carparty"].core.servers["SNEK"].subscription is not None,
                    what="the code to be taken on node b")
        for client in (server, again):
            client.sendClose(1000)
        yield again.when_closed
