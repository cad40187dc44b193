"""
Several relayd nodes on one private redis-server (tests/redis.py), each the real plugin's service on
127.0.0.1 port 0: what crosses nodes, and what happens when Redis goes away and comes back.
"""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from tests.live import Daemon, LivePlayer, every_app, http_get, later, until
from tests.redis import RedisServer


def node_config(redis_url: str, grace: float = 30, **bus) -> str:
    options = "".join(f"{key} = {value}\n" for key, value in bus.items())
    return f"""
[listener:main]
endpoint = tcp:0:interface=127.0.0.1

[bus]
backend = redis
url = {redis_url}
max_backoff = 0.2
{options}""" + every_app(grace, gameroom="create_token = cluster-test-token-0123456789")




def bus_up(daemon: Daemon) -> bool:
    return not daemon.service.bus.problems()


def get(daemon: Daemon, path: str):
    return http_get(daemon.port(), path)



def stop_periodic(service) -> None:
    """Stop a service's periodic work as a crash would: no more renewals or heartbeats from it."""
    from relayd.periodic import Periodic

    for child in list(service):
        if isinstance(child, Periodic) and child.running:
            child.stopService()


class ClusterTestCase(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def start_cluster(self, nodes: int = 2, grace: float = 30, **bus):
        self.redis = RedisServer(self)
        yield self.redis.start()
        self.nodes = [Daemon(self, node_config(self.redis.url, grace, **bus)) for _ in range(nodes)]
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


class SecuredRedis(ClusterTestCase):
    @defer.inlineCallbacks
    def secured_redis(self, password: str):
        import tempfile

        from tests.tlsutil import TestCA

        ca = TestCA(tempfile.mkdtemp(prefix="relayd-redis-ca-"))
        key, cert = ca.issue("localhost")
        chain = ca._write("server-chain.crt", open(cert, "rb").read() + open(ca.chain_path, "rb").read())
        self.redis = RedisServer(self, tls=(key, chain), password=password)
        yield self.redis.start()
        return ca

    @defer.inlineCallbacks
    def test_rediss_with_a_password(self):
        """rediss:// with a private CA and a password in the URL: the nodes verify Redis, log in and fan out."""
        ca = yield self.secured_redis("s3cret#pass")
        url = f"rediss://:s3cret%23pass@localhost:{self.redis.port}/0?ca={ca.root_path}"
        self.nodes = [Daemon(self, node_config(url)) for _ in range(2)]
        for node in self.nodes:
            yield until(lambda node=node: bus_up(node), what="the bus to connect over TLS")
        a, b = self.nodes
        watcher = yield self.subscribed(a, LEADERBOARD)
        trigger = yield b.connect("/ws")
        trigger.send_text(UPDATE)
        self.assertEqual((yield watcher.messages_at_least(1)), ["refresh"])
        watcher.sendClose(1000)
        yield watcher.when_closed

    @defer.inlineCallbacks
    def test_wrong_password_keeps_the_node_unready(self):
        """A password Redis refuses: the node stays up, says so on /readyz, and serves its own clients."""
        ca = yield self.secured_redis("right")
        url = f"rediss://:wrong@localhost:{self.redis.port}/0?ca={ca.root_path}"
        node = Daemon(self, node_config(url))
        yield until(lambda: get(node, "/readyz").addCallback(lambda answer: answer[0] == 503 and answer),
                    what="/readyz to say 503 after the refused AUTH")
        code, body = yield get(node, "/readyz")
        self.assertEqual(code, 503)
        self.assertIn("unreachable", body)
        watcher = yield node.connect("/ws")
        watcher.send_text(LEADERBOARD)
        trigger = yield node.connect("/ws")
        trigger.send_text(UPDATE)
        self.assertEqual((yield watcher.messages_at_least(1)), ["refresh"])
        watcher.sendClose(1000)
        yield watcher.when_closed


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


class LobbyMembers:
    """Lobby members, for LobbyAcrossNodes and RollingStopTests."""

    @defer.inlineCallbacks
    def join(self, node: Daemon, user: str):
        client = yield node.connect("/ws")
        client.send_text(wait_start(user))
        yield until(lambda: last_users(client) is not None and user in " ".join(last_users(client)),
                    what=f"{user} to be in the group")
        return client


class LobbyAcrossNodes(LobbyMembers, ClusterTestCase):
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
        stop_periodic(b.service.cluster)
        yield b.service.bus.stopService()
        yield until(lambda: last_users(ann) == ["ann"], timeout=10, what="bob to be swept")
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
        yield until(lambda: sorted(last_users(cy) or []) == ["ann", "bob", "cy"], what="cy to see everyone")
        yield until(lambda: sorted(last_users(bob) or []) == ["ann", "bob", "cy"], what="bob to see everyone")
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
        yield later(0.1)  # an absence: a frame for p1 that reached p0 too would be here by now
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
        from relayd.apps.carparty.cluster import CodeKeeper

        [keeper] = [s for s in a.service.apps["carparty"].services if isinstance(s, CodeKeeper)]
        stop_periodic(keeper.leases)
        keeper.leases.stopService = lambda: None
        stop_periodic(a.service.cluster)
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


class ClickerDevices:
    """Devices and listeners, for ClickerAcrossNodes and RollingStopTests."""

    @defer.inlineCallbacks
    def register(self, node: Daemon, secret: str = ""):
        device = yield node.connect("/clicker/ws")
        device.send_text(f"REGISTER {secret}".strip())
        yield device.messages_at_least(1)
        _, device_id, secret = device.messages[0].split(" ")
        return device, device_id, secret

    @defer.inlineCallbacks
    def listen(self, node: Daemon, *ids: str):
        listener = yield node.connect("/clicker/ws")
        listener.send_text("LISTEN " + " ".join(ids))
        yield listener.messages_at_least(1)
        return listener


class ClickerAcrossNodes(ClickerDevices, ClusterTestCase):
    @defer.inlineCallbacks
    def test_listener_sees_a_device_on_another_node(self):
        """A listener on node a sees a device on node b connect, score (after SCORED) and disconnect."""
        yield self.start_cluster(2)
        a, b = self.nodes
        device, device_id, _ = yield self.register(b)
        listener = yield self.listen(a, device_id)
        self.assertEqual(listener.messages, [f"CONNECT {device_id}"])
        device.send_text("SCORE 1700000000000 5")
        yield device.messages_at_least(2)
        self.assertEqual(device.messages[1], "SCORED 1700000000000")
        yield until(lambda: f"SCORE 1700000000000 {device_id} 5" in listener.messages, what="the score on node a")
        device.sendClose(1000)
        yield device.when_closed
        yield until(lambda: f"DISCONNECT {device_id}" in listener.messages, what="the disconnect on node a")
        listener.sendClose(1000)
        yield listener.when_closed

    @defer.inlineCallbacks
    def test_identity_and_latest_score_are_shared(self):
        """A device keeps its id on another node with its secret; a listener anywhere gets its latest score."""
        yield self.start_cluster(3)
        a, b, c = self.nodes
        device, device_id, secret = yield self.register(a)
        device.send_text("SCORE 1 -9223372036854775808")
        yield device.messages_at_least(2)
        device.sendClose(1000)
        yield device.when_closed
        again, again_id, again_secret = yield self.register(b, secret)
        self.assertEqual((again_id, again_secret), (device_id, secret))
        listener = yield self.listen(c, device_id)
        yield listener.messages_at_least(2)
        self.assertEqual(listener.messages, [f"CONNECT {device_id}", f"SCORE 1 {device_id} -9223372036854775808"])
        again.send_text("SCORE 1 -9223372036854775808")  # a retry: acknowledged, not delivered again
        yield again.messages_at_least(2)
        yield later(0.2)  # an absence: a second delivery of the retried score would be here by now
        self.assertEqual(len(listener.messages), 2)
        for client in (again, listener):
            client.sendClose(1000)
            yield client.when_closed

    @defer.inlineCallbacks
    def test_takeover_across_nodes_closes_the_old_connection_without_a_flap(self):
        """The same secret registering on another node closes the older connection with 4001; listeners see no disconnect."""
        yield self.start_cluster(2)
        a, b = self.nodes
        old, device_id, secret = yield self.register(a)
        listener = yield self.listen(a, device_id)
        new, new_id, _ = yield self.register(b, secret)
        self.assertEqual(new_id, device_id)
        self.assertEqual((yield old.when_closed), 4001)
        new.send_text("SCORE 2 7")
        yield until(lambda: f"SCORE 2 {device_id} 7" in listener.messages, what="the new connection's score")
        self.assertEqual(listener.messages, [f"CONNECT {device_id}", f"SCORE 2 {device_id} 7"])
        for client in (new, listener):
            client.sendClose(1000)
            yield client.when_closed

    @defer.inlineCallbacks
    def test_acknowledged_score_reaches_a_listener_whose_node_missed_it(self):
        """A score acknowledged while the listener's node was unsubscribed reaches the listener once its node is back."""
        yield self.start_cluster(2)
        a, b = self.nodes
        device, device_id, _ = yield self.register(b)
        listener = yield self.listen(a, device_id)
        a.service.bus.subscriber._client.stopService()  # node a stops hearing Redis
        yield until(lambda: not a.service.bus.subscriber.up, what="node a to lose its subscription")
        device.send_text("SCORE 3 11")
        yield device.messages_at_least(2)  # SCORED: written in Redis
        yield later(0.1)  # an absence: node a, unsubscribed, must not have relayed it
        self.assertNotIn(f"SCORE 3 {device_id} 11", listener.messages)
        a.service.bus.subscriber._client.startService()
        yield until(lambda: f"SCORE 3 {device_id} 11" in listener.messages, what="the missed score")
        for client in (device, listener):
            client.sendClose(1000)
            yield client.when_closed

    @defer.inlineCallbacks
    def test_devices_of_a_dead_node_disconnect(self):
        """A device whose node dies is reported disconnected to listeners on other nodes within node_timeout."""
        yield self.start_cluster(2, node_timeout=1)
        a, b = self.nodes
        device, device_id, _ = yield self.register(b)
        listener = yield self.listen(a, device_id)
        b.service.cluster.stopService = lambda: None
        stop_periodic(b.service.cluster)
        yield b.service.bus.stopService()
        yield until(lambda: f"DISCONNECT {device_id}" in listener.messages, what="the dead node's device to disconnect")
        for client in (device, listener):
            client.sendClose(1000)
            yield client.when_closed

    @defer.inlineCallbacks
    def test_score_while_redis_is_down_is_refused_then_accepted(self):
        """With Redis down a SCORE gets ERROR unavailable and close 1013 (no SCORED: the device keeps it); after Redis returns, the device reconnects and its retry is acknowledged."""
        yield self.start_cluster(1)
        (a,) = self.nodes
        device, device_id, secret = yield self.register(a)
        self.redis.kill()
        yield until(lambda: not bus_up(a), what="the node to notice")
        device.send_text("SCORE 4 1")
        self.assertEqual((yield device.when_closed), 1013)
        self.assertTrue(device.messages[1].startswith("ERROR unavailable "))
        self.assertNotIn("SCORED 4", device.messages)
        yield self.redis.start()
        yield until(lambda: bus_up(a), what="the node to reconnect")

        # as a device does: reconnect, register with its secret, resend until acknowledged (a
        # connection can drop again just after coming up)
        @defer.inlineCallbacks
        def acknowledged():
            again, _, _ = yield self.register(a, secret)
            again.send_text("SCORE 4 1")
            answers = yield again.messages_at_least(2)
            again.sendClose(1000)
            return answers[1] == "SCORED 4"

        yield until(acknowledged, what="the retried score to be acknowledged", step=0.1)

    @defer.inlineCallbacks
    def test_identities_survive_a_redis_restart(self):
        """Redis restarted empty: the nodes write back what their stores kept, so a device keeps its id."""
        yield self.start_cluster(2)
        a, b = self.nodes
        device, device_id, secret = yield self.register(a)
        device.sendClose(1000)
        yield device.when_closed
        self.redis.kill()
        yield until(lambda: not bus_up(a), what="the node to notice")
        yield self.redis.start()
        yield until(lambda: bus_up(a) and bus_up(b), what="the nodes to reconnect")
        cluster = a.service.cluster
        yield until(lambda: cluster.call("HLEN", cluster.key("clicker", "identity")).addCallback(lambda n: n == 1),
                    what="the identity to be written back")
        again, again_id, _ = yield self.register(b, secret)
        self.assertEqual(again_id, device_id)
        again.sendClose(1000)
        yield again.when_closed


def typed(client, kind: str) -> list:
    return [m for m in (json.loads(x) for x in client.messages) if m.get("type") == kind]


class GroovejetClients:
    """Hosts and guests, for GroovejetAcrossNodes and RollingStopTests."""

    @defer.inlineCallbacks
    def connect(self, node: Daemon, query: str = ""):
        client = yield node.connect("/groovejet/" + query)
        yield until(lambda: typed(client, "identity"), what="the identity")
        return client

    def identity(self, client) -> dict:
        return typed(client, "identity")[-1]["data"]

    @defer.inlineCallbacks
    def room_with_guest(self, host_node: Daemon, guest_node: Daemon):
        host = yield self.connect(host_node)
        host.send_text('{"type": "createRoom"}')
        yield until(lambda: typed(host, "createdRoom"), what="the room")
        code = typed(host, "createdRoom")[0]["data"]["roomCode"]
        guest = yield self.connect(guest_node)
        guest.send_text(json.dumps({"type": "joinRoom", "data": {"roomCode": code.upper(), "canHost": True}}))
        yield until(lambda: typed(guest, "joinedRoom"), what="the guest to join")
        return host, guest, code


class GroovejetAcrossNodes(GroovejetClients, ClusterTestCase):
    @defer.inlineCallbacks
    def test_host_and_guest_on_different_nodes_signal(self):
        """A host on node a and a guest on node b exchange offer, answer and ICE candidates; the server sets clientId."""
        yield self.start_cluster(2)
        a, b = self.nodes
        host, guest, code = yield self.room_with_guest(a, b)
        self.assertEqual(typed(guest, "joinedRoom")[0]["data"], {"isHost": False, "reconnected": False})
        guest_id = self.identity(guest)["clientId"]
        guest.send_text('{"type": "guestOfferSignal", "data": {"offerSignal": "sdp-offer", "clientId": "forged"}}')
        yield until(lambda: typed(host, "guestOfferSignal"), what="the offer at the host")
        self.assertEqual(typed(host, "guestOfferSignal")[0]["data"], {"offerSignal": "sdp-offer", "clientId": guest_id})
        host.send_text(json.dumps({"type": "hostAnswerSignal", "data": {"answerSignal": "sdp-answer", "clientId": guest_id}}))
        yield until(lambda: typed(guest, "hostAnswerSignal"), what="the answer at the guest")
        self.assertEqual(typed(guest, "hostAnswerSignal")[0]["data"], {"answerSignal": "sdp-answer"})
        guest.send_text('{"type": "iceCandidate", "data": {"candidate": "c1"}}')
        yield until(lambda: typed(host, "iceCandidate"), what="the candidate at the host")
        guest.send_text('{"type": "bogus", "data": {}}')
        yield until(lambda: typed(guest, "error"), what="the error for an unknown type")
        self.assertEqual(typed(guest, "error")[0]["errorType"], "unknownType")
        for client in (host, guest):
            client.sendClose(1000)
            yield client.when_closed

    @defer.inlineCallbacks
    def test_query_string_generation_across_three_nodes(self):
        """POST /rooms on one node; the host (?host=true&code=) and a guest (?code=) on the two others find the room."""
        yield self.start_cluster(3)
        a, b, c = self.nodes
        response = yield Agent(reactor).request(b"POST", f"http://127.0.0.1:{a.port()}/groovejet/rooms".encode())
        code = json.loads((yield readBody(response)))["code"]
        host = yield self.connect(b, f"?host=true&code={code}")
        guest = yield self.connect(c, f"?code={code}")
        guest.send_text('{"type": "guestOfferSignal", "data": {"offerSignal": "o"}}')
        yield until(lambda: typed(host, "guestOfferSignal"), what="the offer across nodes")
        rival = yield self.connect(c, f"?host=true&code={code}")
        yield until(lambda: typed(rival, "error"), what="hostAlreadyExists")
        self.assertEqual(typed(rival, "error")[0]["errorType"], "hostAlreadyExists")
        self.assertEqual((yield rival.when_closed), 1000)
        for client in (host, guest):
            client.sendClose(1000)
            yield client.when_closed

    @defer.inlineCallbacks
    def test_resume_on_another_node(self):
        """A guest that reconnects to another node resumes its seat with its token; the host hears it leave and return."""
        yield self.start_cluster(3)
        a, b, c = self.nodes
        host, guest, code = yield self.room_with_guest(a, b)
        token, guest_id = self.identity(guest)["reconnectToken"], self.identity(guest)["clientId"]
        guest.sendClose(1000)
        yield guest.when_closed
        yield until(lambda: typed(host, "guestLeft"), what="guestLeft")
        back = yield self.connect(c, f"?resume={token}")
        yield until(lambda: typed(back, "resumed"), what="resumed")
        self.assertEqual(typed(back, "resumed")[0]["data"], {"roomCode": code, "isHost": False, "clientId": guest_id})
        yield until(lambda: typed(host, "guestReturned"), what="guestReturned")
        for client in (host, back):
            client.sendClose(1000)
            yield client.when_closed

    @defer.inlineCallbacks
    def test_host_migration_and_snapshot_across_nodes(self):
        """The host's snapshot is stored; when the host does not return a guest on another node is promoted with it."""
        yield self.start_cluster(3, grace=0.3)
        a, b, c = self.nodes
        host, guest, code = yield self.room_with_guest(b, c)
        other = yield self.connect(a)
        other.send_text(json.dumps({"type": "joinRoom", "data": {"roomCode": code}}))
        yield until(lambda: typed(other, "joinedRoom"), what="the second guest")
        host.send_text('{"type": "snapshot", "data": {"level": 3}}')
        yield until(lambda: typed(host, "snapshotStored"), what="snapshotStored")
        host.sendClose(1000)
        yield host.when_closed
        yield until(lambda: typed(guest, "promoted"), what="the first guest's promotion")
        self.assertEqual(typed(guest, "promoted")[0]["data"]["snapshot"], {"level": 3})
        yield until(lambda: typed(other, "hostChanged"), what="hostChanged at the other guest")
        for client in (guest, other):
            client.sendClose(1000)
            yield client.when_closed

    @defer.inlineCallbacks
    def test_a_graceful_stop_hands_the_room_over_at_once(self):
        """
        The room's node is stopped gracefully (a rolling restart): it writes the room, releases its
        lease while Redis is still connected and tells the host piped to it that the room moved (1012),
        so the host resumes on another node within 5 s although node_timeout is 60 s (a lease left to
        expire would keep the room away for that long).
        """
        yield self.start_cluster(2, node_timeout=60)
        a, b = self.nodes
        response = yield Agent(reactor).request(b"POST", f"http://127.0.0.1:{a.port()}/groovejet/rooms".encode())
        code = json.loads((yield readBody(response)))["code"]  # the room lives on node a
        host = yield self.connect(b, f"?host=true&code={code}")
        host.send_text('{"type": "snapshot", "data": "state-9"}')
        yield until(lambda: typed(host, "snapshotStored"), what="the snapshot")
        token = self.identity(host)["reconnectToken"]
        yield a.stop()
        self.assertEqual((yield host.when_closed), 1012)  # the room moved: reconnect
        resumed = yield self.connect(b, f"?resume={token}")
        yield until(lambda: typed(resumed, "resumed"), what="the host to resume on node b", timeout=5)
        yield until(lambda: typed(resumed, "snapshot"), what="the snapshot back", timeout=5)
        self.assertEqual(typed(resumed, "snapshot")[0]["data"], "state-9")
        resumed.sendClose(1000)
        yield resumed.when_closed

    @defer.inlineCallbacks
    def test_room_of_a_dead_node_is_taken_over(self):
        """
        The room's node dies: its clients on other nodes are told to reconnect (1012), resume there
        with their tokens, the room is taken over with its seats and snapshot, and signalling goes on.
        """
        yield self.start_cluster(3, node_timeout=1)
        a, b, c = self.nodes
        response = yield Agent(reactor).request(b"POST", f"http://127.0.0.1:{a.port()}/groovejet/rooms".encode())
        code = json.loads((yield readBody(response)))["code"]  # the room lives on node a
        host = yield self.connect(b, f"?host=true&code={code}")
        host.send_text('{"type": "snapshot", "data": "state-7"}')
        yield until(lambda: typed(host, "snapshotStored"), what="the snapshot")
        guest = yield self.connect(c, f"?code={code}")
        host_token, guest_token = self.identity(host)["reconnectToken"], self.identity(guest)["reconnectToken"]
        a.service.cluster.stopService = lambda: None
        keeper = a.service.apps["groovejet"].placement
        stop_periodic(keeper.leases)
        keeper.leases.stopService = lambda: None
        stop_periodic(a.service.cluster)
        yield a.service.bus.stopService()
        self.assertEqual((yield host.when_closed), 1012)
        self.assertEqual((yield guest.when_closed), 1012)
        host2 = yield self.connect(c, f"?resume={host_token}")
        yield until(lambda: typed(host2, "resumed"), what="the host to resume on node c")
        self.assertTrue(typed(host2, "resumed")[0]["data"]["isHost"])
        yield until(lambda: typed(host2, "snapshot"), what="the snapshot back")
        self.assertEqual(typed(host2, "snapshot")[0]["data"], "state-7")
        guest2 = yield self.connect(b, f"?resume={guest_token}")
        yield until(lambda: typed(guest2, "resumed"), what="the guest to resume on node b")
        guest2.send_text('{"type": "guestOfferSignal", "data": {"offerSignal": "again"}}')
        yield until(lambda: typed(host2, "guestOfferSignal"), what="signalling after the takeover")
        for client in (host2, guest2):
            client.sendClose(1000)
            yield client.when_closed


    @defer.inlineCallbacks
    def test_clients_coming_and_going_leave_nothing_behind(self):
        """Many guests piped to another node join and leave: no pipe, remote session, seat or bus channel is left on either node."""
        yield self.start_cluster(2, grace=0.1)
        a, b = self.nodes
        host, guest, code = yield self.room_with_guest(a, b)
        guest.sendClose(1000)
        yield guest.when_closed
        app_a, app_b = a.service.apps["groovejet"], b.service.apps["groovejet"]
        yield until(lambda: not app_a.placement.pipes.ends and len(app_a.core.rooms[code].guests) == 0,
                    what="the first guest to be gone")
        channels_a, channels_b = a.service.bus.channel_count(), b.service.bus.channel_count()
        for _ in range(3):
            guests = []
            for _ in range(10):
                g = yield self.connect(b)
                g.send_text(json.dumps({"type": "joinRoom", "data": {"roomCode": code}}))
                guests.append(g)
            for g in guests:
                yield until(lambda g=g: typed(g, "joinedRoom"), what="a guest to join")
            for g in guests:
                g.sendClose(1000)
                yield g.when_closed
        yield until(lambda: not app_a.placement.pipes.ends and not app_b.placement.pipes.pipes
                    and len(app_a.core.rooms[code].guests) == 0, what="every pipe and seat to be gone")
        yield until(lambda: (a.service.bus.channel_count(), b.service.bus.channel_count()) == (channels_a, channels_b),
                    what="the bus channels to return to where they were")
        self.assertEqual((a.service.bus._unconfirmed, b.service.bus._unconfirmed), ({}, {}))
        self.assertEqual((set(app_a.live), app_b.live), ({self.identity(host)["clientId"]}, {}))
        host.sendClose(1000)
        yield host.when_closed


class GameroomPlayers:
    """Rooms and players, for GameroomAcrossNodes and RollingStopTests."""

    @defer.inlineCallbacks
    def create(self, node: Daemon, players: int = 2) -> str:
        from io import BytesIO

        from twisted.web.client import FileBodyProducer
        from twisted.web.http_headers import Headers

        body = json.dumps({"engine": "counter@1", "seed": 3, "players": players}).encode()
        response = yield Agent(reactor).request(
            b"POST", f"http://127.0.0.1:{node.port()}/gameroom/create".encode(),
            Headers({b"authorization": [b"Bearer cluster-test-token-0123456789"]}), FileBodyProducer(BytesIO(body)))
        self.assertEqual(response.code, 201)
        return json.loads((yield readBody(response)))["id"]

    @defer.inlineCallbacks
    def play(self, node: Daemon, room_id: str, player, rejoin: bool = False):
        client = yield node.connect(f"/gameroom/play/{room_id}")
        live = LivePlayer(client, player)
        client.send_json(player.rejoin() if rejoin else player.join())
        return live

    @defer.inlineCallbacks
    def until_turn(self, players, turn: int):
        yield until(lambda: all(p.player.executed >= turn for p in players), timeout=20, what=f"turn {turn}")

    @defer.inlineCallbacks
    def game_on(self, owner: Daemon, player_nodes):
        """A room created on owner, a player on each of player_nodes, played to turn 10, then silent."""
        from tests.gameroom_reference import ReferencePlayer

        room_id = yield self.create(owner)
        players = []
        for i, node in enumerate(player_nodes):
            players.append((yield self.play(node, room_id, ReferencePlayer(name=f"p{i}"))))
        yield self.until_turn(players, 10)
        for p in players:
            p.player.player_id = None  # stop sending, so the log stops growing
        return room_id, players

    @defer.inlineCallbacks
    def resumed_and_agreeing(self, node: Daemon, room_id: str, players):
        """The players, told to reconnect (1012), rejoin on node and play 10 more turns in agreement."""
        for p in players:
            self.assertEqual((yield p.client.when_closed), 1012)
        executed = max(p.player.executed for p in players)
        resumed = []
        for p in players:
            p.player.player_id = "rejoining"
            resumed.append((yield self.play(node, room_id, p.player, rejoin=True)))
        yield self.until_turn(resumed, executed + 10)
        target = executed + 10
        self.assertEqual(resumed[0].player.hashes[target], resumed[1].player.hashes[target])
        self.assertIn(room_id, node.service.apps["gameroom"].core.rooms)
        for p in resumed:
            p.client.sendClose(1000)
            yield p.client.when_closed


class GameroomAcrossNodes(GameroomPlayers, ClusterTestCase):
    @defer.inlineCallbacks
    def test_players_on_other_nodes_play_in_lock_step(self):
        """A room created on node a ticks there; players on nodes b and c play it in lock-step and agree on every hash."""
        from tests.gameroom_reference import ReferencePlayer

        yield self.start_cluster(3)
        a, b, c = self.nodes
        room_id = yield self.create(a)
        players = []
        for i, node in enumerate((b, c)):
            players.append((yield self.play(node, room_id, ReferencePlayer(name=f"p{i}"))))
        yield self.until_turn(players, 20)
        self.assertEqual(players[0].player.hashes[20], players[1].player.hashes[20])
        self.assertIn(room_id, a.service.apps["gameroom"].core.running)
        self.assertNotIn(room_id, b.service.apps["gameroom"].core.rooms)
        code, body = yield get(c, f"/gameroom/rooms/{room_id}")  # as node a last wrote it
        self.assertEqual((code, json.loads(body)["id"]), (200, room_id))
        watcher = yield c.connect(f"/gameroom/watch/{room_id}")
        yield until(lambda: len(watcher.messages) > 5, what="the spectator to get the log")
        for client in [p.client for p in players] + [watcher]:
            client.sendClose(1000)
            yield client.when_closed

    @defer.inlineCallbacks
    def test_a_master_packet_crosses_redis_once_per_node(self):
        """
        Three players on node b of a room held by node a play in lock-step, and each turn's master
        packet leaves node a once for node b, not once per player: node a publishes about one message
        a turn (three without it).
        """
        from tests.gameroom_reference import ReferencePlayer

        yield self.start_cluster(2)
        a, b = self.nodes
        room_id = yield self.create(a, players=3)
        players = []
        for i in range(3):
            players.append((yield self.play(b, room_id, ReferencePlayer(name=f"p{i}"))))
        yield self.until_turn(players, 10)
        room = a.service.apps["gameroom"].core.rooms[room_id]

        def published():
            return a.service.metrics.registry.get_sample_value("relayd_bus_published_total")

        first_turn, first_count = room.turn, published()
        yield self.until_turn(players, first_turn + 30)
        per_turn = (published() - first_count) / (room.turn - first_turn)
        self.assertLess(per_turn, 1.5)
        hashes = [p.player.hashes[first_turn + 30] for p in players]
        self.assertEqual(len(set(hashes)), 1)
        for p in players:
            p.client.sendClose(1000)
            yield p.client.when_closed

    @defer.inlineCallbacks
    def test_a_graceful_stop_hands_a_running_game_over_at_once(self):
        """
        The game's node is stopped gracefully mid-game (a rolling restart), node_timeout 60 s: the room is
        written and its lease released while Redis is connected, its players elsewhere are told to
        reconnect (1012), rejoin on another node, which takes the room over at once, and the game goes
        on in agreement.
        """
        yield self.start_cluster(3, node_timeout=60)
        a, b, c = self.nodes
        room_id, players = yield self.game_on(a, (b, c))
        yield until(lambda: len({p.player.executed for p in players}) == 1, what="the last turns at the players")
        yield a.stop()
        yield self.resumed_and_agreeing(b, room_id, players)

    @defer.inlineCallbacks
    def test_room_of_a_dead_node_is_taken_over(self):
        """
        The room's node dies mid-game: its players elsewhere are told to reconnect (1012), rejoin with
        their session tokens on another node, which takes the room over from Redis, and the game goes on.
        """
        yield self.start_cluster(3, node_timeout=1)
        a, b, c = self.nodes
        room_id, players = yield self.game_on(a, (b, c))
        app_a = a.service.apps["gameroom"]
        room_a = app_a.core.rooms[room_id]
        yield until(lambda: len({p.player.executed for p in players}) == 1 and room_a.persisted >= room_a.turn
                    and room_id not in app_a.core.dirty and app_a._flushing is None,
                    what="the last turns at the players and in Redis")
        a.service.cluster.stopService = lambda: None
        placement = a.service.apps["gameroom"].placement
        stop_periodic(placement.leases)
        placement.leases.stopService = lambda: None
        a.service.apps["gameroom"].scheduler.stop()
        stop_periodic(a.service.apps["gameroom"].services)
        stop_periodic(a.service.cluster)
        yield a.service.bus.stopService()
        yield self.resumed_and_agreeing(b, room_id, players)


class RedisDurabilityTests(ClusterTestCase):
    @defer.inlineCallbacks
    def _node_on(self, appendonly: bool):
        self.redis = RedisServer(self, appendonly=appendonly)
        yield self.redis.start()
        node = Daemon(self, node_config(self.redis.url))
        yield until(lambda: node.service.cluster.durable is not None, what="the node to ask redis whether it persists")
        return node

    @defer.inlineCallbacks
    def test_a_redis_without_persistence_is_said_loudly(self):
        """On a Redis with appendonly no, a node says at connect, at warn, that a Redis restart with a node loses what it acknowledged, and relayd_redis_persistent is 0; with appendonly yes it is 1 and nothing is warned."""
        from tests.support import log_lines

        lines = log_lines(self, "relayd.backplane.cluster")
        node = yield self._node_on(appendonly=False)
        self.assertFalse(node.service.cluster.durable)
        warned = [e for e in lines if "keeps nothing across its own restart" in e["log_format"]]
        self.assertEqual(len(warned), 1)
        self.assertEqual(node.service.metrics.registry.get_sample_value("relayd_redis_persistent"), 0)

    @defer.inlineCallbacks
    def test_a_persistent_redis_is_not_warned_about(self):
        """With appendonly yes, the node records that Redis persists and warns nothing."""
        from tests.support import log_lines

        lines = log_lines(self, "relayd.backplane.cluster")
        node = yield self._node_on(appendonly=True)
        self.assertTrue(node.service.cluster.durable)
        self.assertEqual([e for e in lines if "keeps nothing" in e["log_format"]], [])
        self.assertEqual(node.service.metrics.registry.get_sample_value("relayd_redis_persistent"), 1)


class FencedWriteTests(ClusterTestCase):
    @defer.inlineCallbacks
    def test_a_write_reaching_redis_after_the_lease_moved_is_refused(self):
        """
        An owner's write runs only while Redis says the room's lease is this node's: once another node
        holds it (as after a partition that held this node's bytes back), the write changes nothing,
        fires False, and the node gives the room up.
        """
        yield self.start_cluster(1)
        (a,) = self.nodes
        placement = a.service.apps["gameroom"].placement
        leases, cluster = placement.leases, a.service.cluster
        lost = []
        self.patch(leases, "lost", lost.append)
        self.assertTrue((yield leases.claim("room-x")))
        data = cluster.key("test", "data")
        self.assertTrue((yield leases.write("room-x", [("SET", data, "by the owner")])))
        self.assertEqual((yield cluster.call("GET", data)), b"by the owner")
        yield cluster.call("SET", leases.key("room-x"), "another-node")  # the lease moved meanwhile
        self.assertFalse((yield leases.write("room-x", [("SET", data, "stale"), ("DEL", data)])))
        self.assertEqual((yield cluster.call("GET", data)), b"by the owner")
        self.assertEqual(lost, ["room-x"])
        self.assertNotIn("room-x", leases.held)
        self.assertFalse((yield leases.write("room-x", [("SET", data, "after")])))  # nothing sent now


class PartitionTests(ClusterTestCase):
    @defer.inlineCallbacks
    def test_a_node_cut_off_never_holds_a_code_another_node_holds(self):
        """
        Node a reaches Redis through a proxy that holds bytes; a carparty game screen on a has code
        PART. The proxy holds everything (a partition, a cut off, b not): a gives the code up and
        closes its game screen before b can take the code (a game screen on b retrying every 0.1 s);
        after the partition heals, a does not take it back.
        """
        import time

        from tests.partition import HoldingProxy

        self.redis = RedisServer(self)
        yield self.redis.start()
        proxy = yield HoldingProxy(self.redis.port).start()
        self.addCleanup(proxy.stop)
        a = Daemon(self, node_config(f"redis://127.0.0.1:{proxy.port}/0", node_timeout=3))
        b = Daemon(self, node_config(self.redis.url, node_timeout=3))
        for node in (a, b):
            yield until(lambda node=node: bus_up(node), what="the bus to connect")
        screen = yield a.connect("/carparty")
        screen.send_text(login("login_server", "PART"))
        lease = b.service.cluster.key("carparty:server", "PART")
        yield until(lambda: b.service.cluster.call("GET", lease).addCallback(
            lambda holder: holder == a.service.cluster.node_id.encode()), what="a to hold the code")
        closed_at = []
        screen.when_closed.addCallback(lambda code: closed_at.append(time.monotonic()))
        proxy.hold()
        cut = time.monotonic()
        taken_at = None
        while taken_at is None and time.monotonic() - cut < 15:
            rival = yield b.connect("/carparty")
            rival.send_text(login("login_server", "PART"))
            yield later(0.1)
            holder = yield b.service.cluster.call("GET", lease)
            if rival.state == rival.STATE_OPEN and holder == b.service.cluster.node_id.encode():
                taken_at = time.monotonic()
            else:
                rival.dropConnection(abort=True)
        self.assertIsNotNone(taken_at, "b never took the code")
        self.assertEqual(len(closed_at), 1, "a still serves its game screen as owner of PART")
        self.assertLess(closed_at[0], taken_at)  # never two holders at once
        proxy.heal()
        yield later(2)  # what the partition held back reaches Redis; renewals go on
        self.assertEqual((yield b.service.cluster.call("GET", lease)), b.service.cluster.node_id.encode())
        self.assertEqual(rival.state, rival.STATE_OPEN)
        rival.sendClose(1000)
        yield rival.when_closed


class RollingStopTests(GroovejetClients, GameroomPlayers, ClickerDevices, LobbyMembers, ClusterTestCase):
    """A rolling restart's first step, every app at once: one of two nodes stopped under load."""

    @defer.inlineCallbacks
    def test_a_node_stopped_under_load_of_every_app_hands_everything_over(self):
        """
        Node a holds a clicker device's score, a carparty code, a groovejet room with a snapshot, a
        running game and a lobby member, with clients of each on node b; a is stopped (SIGTERM's path):
        its own clients are closed 1001, and within 2 s (node_timeout is 60) b serves the room, the game
        and the code, the device's acknowledged score is there, and the lobby lives on at b.
        """
        import time

        from tests.gameroom_reference import ReferencePlayer

        yield self.start_cluster(2, node_timeout=60)
        a, b = self.nodes
        device, device_id, secret = yield self.register(a)
        device.send_text("SCORE 1700000000001 42")
        yield device.messages_at_least(2)
        self.assertEqual(device.messages[1], "SCORED 1700000000001")
        screen = yield a.connect("/carparty")
        screen.send_text(login("login_server", "ROLL"))
        response = yield Agent(reactor).request(b"POST", f"http://127.0.0.1:{a.port()}/groovejet/rooms".encode())
        code = json.loads((yield readBody(response)))["code"]
        host = yield self.connect(b, f"?host=true&code={code}")
        host.send_text('{"type": "snapshot", "data": "rolling"}')
        yield until(lambda: typed(host, "snapshotStored"), what="the snapshot")
        token = self.identity(host)["reconnectToken"]
        room_id, players = yield self.game_on(a, (b, b))
        yield until(lambda: len({p.player.executed for p in players}) == 1, what="the last turns at the players")
        ann = yield self.join(a, "ann")
        bob = yield self.join(b, "bob")

        started = time.monotonic()
        yield a.stop()
        for client in (device, screen, ann):
            self.assertEqual((yield client.when_closed), 1001)
        resumed = yield self.connect(b, f"?resume={token}")
        yield until(lambda: typed(resumed, "snapshot"), what="the groovejet room on b", timeout=2)
        self.assertEqual(typed(resumed, "snapshot")[0]["data"], "rolling")
        rival = yield b.connect("/carparty")
        rival.send_text(login("login_server", "ROLL"))
        lease = b.service.cluster.key("carparty:server", "ROLL")
        yield until(lambda: b.service.cluster.call("GET", lease).addCallback(
            lambda holder: holder == b.service.cluster.node_id.encode()), what="the code taken on b", timeout=2)
        yield self.resumed_and_agreeing(b, room_id, players)
        self.assertLess(time.monotonic() - started, 5)  # served again and 10 turns played on b
        back, again_id, _ = yield self.register(b, secret)
        self.assertEqual(again_id, device_id)
        judge = yield self.listen(b, device_id)
        yield until(lambda: f"SCORE 1700000000001 {device_id} 42" in judge.messages, what="the acknowledged score")
        yield until(lambda: last_users(bob) == ["bob"], what="the lobby at b without a's member")
        for client in (resumed, rival, back, judge, bob):
            client.sendClose(1000)
            yield client.when_closed
