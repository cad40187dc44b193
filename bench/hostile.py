"""
Figures for docs/security.md: what each abuse of issue-sized scale costs relayd now, on the shipped
configuration. The first figures run in memory (no sockets; the memory reactor's clock advanced at
the attack's rate); with --processes, attacks whose cost is a process's (memory, the event loop)
run against relayd started from etc/relayd.ini (only the port and state dir changed) on 127.0.0.1,
from loopback addresses of their own (tests/attacks.py).

    .venv/bin/python bench/hostile.py [--processes]

Prints one JSON object per attack.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.logger import globalLogPublisher  # noqa: E402

from tests.test_shipped_config import shipped  # noqa: E402


def sample(h, name: str, labels: dict) -> float:
    return h.service.metrics.registry.get_sample_value(name, labels) or 0.0


def groovejet_rooms(requests: int = 2000) -> dict:
    """Anonymous POST rooms from one address, as fast as the test client sends them."""
    h = shipped()
    answers: dict[int, int] = {}
    for _ in range(requests):
        status = h.http("POST", "/groovejet/rooms")[0]
        answers[status] = answers.get(status, 0) + 1
    held = len(h.app("groovejet").core.rooms)
    h.advance(31)
    return {"attack": "groovejet POST rooms from one address", "requests": requests, "answers": answers,
            "rooms_held": held, "rooms_left_after_31s": len(h.app("groovejet").core.rooms)}


def wikispeedruns_flood(joins: int = 300, name: str = "dan") -> dict:
    """Joins with one name (each renamed "also ...") into a lobby with one real member, 300 a second."""
    h = shipped()
    member = h.ws("/wikispeedruns")
    member.send_json({"type": "wait_start", "user": "real", "lobby_id": 1, "prompt_id": 1})
    h.flush()
    h.advance(0.2)
    member.take()
    sent = 0
    for n in range(joins):
        c = h.ws("/wikispeedruns", host=f"10.1.{n // 200}.{n % 200 + 1}")
        text = json.dumps({"type": "wait_start", "user": name, "lobby_id": 1, "prompt_id": 1})
        sent += len(text)
        c.send_text(text)
        h.advance(1 / 300)
    h.flush()
    h.advance(0.2)
    written = sample(h, "relayd_sent_bytes_total", {"app": "wikispeedruns"})
    return {"attack": f"{joins} joins named {name!r} from {joins} addresses", "bytes_sent_by_attacker": sent,
            "bytes_relayd_wrote": int(written), "ratio": round(written / sent, 1),
            "rosters_the_real_member_got": sum(1 for m in member.json_messages() if m.get("type") == "update"),
            "real_member_closed": member.closed}


def clicker_registrations(attempts: int = 2000) -> dict:
    h = shipped()
    minted = refused = 0
    for _ in range(attempts):
        c = h.ws("/clicker/ws")
        c.send_text("REGISTER")
        h.flush()
        reply = c.take()[0]
        minted += reply.startswith("REGISTERED")
        refused += reply.startswith("ERROR quota")
        c.sendClose(1000)
        h.flush()
    return {"attack": "anonymous REGISTER from one address", "attempts": attempts, "identities_minted": minted,
            "refused": refused, "hours_to_fill_900000_ids_from_one_address": round(900_000 / 200, 0)}


def clicker_unknown_verbs(lines: int = 10_000) -> dict:
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = shipped()
        c = h.ws("/clicker/ws")
        for n in range(lines):
            if c.closed:
                break
            c.send_text(f"NOPE{n}")
            if n % 50 == 0:
                h.advance(1.0)
        h.flush()
        c.sendClose(1000)
        h.flush()
    finally:
        globalLogPublisher.removeObserver(events.append)
    logged = [e for e in events if e.get("app") == "clicker"]
    return {"attack": "unknown clicker verbs at 50/s", "sent_until_closed": n + 1, "close_code": c.close_code,
            "log_lines": len(logged)}


def clicker_registrations_in_flight(in_flight: int = 250) -> dict:
    """REGISTERs from one address all in flight at once (the store slow to answer), on the shipped quota."""
    from relayd import config as relayd_config
    from tests.apps.test_clicker import SlowStore
    from tests.support import Harness
    from tests.test_shipped_config import shipped_text

    store = SlowStore()
    h = Harness(relayd_config.loads(shipped_text(), path="relayd.ini"), store=store).start()
    devices = [h.ws("/clicker/ws") for _ in range(in_flight)]
    for device in devices:
        device.send_text("REGISTER")
    h.flush()
    written = len(store.pending)
    store.release()
    h.flush()
    replies = [d.take()[0].split(" ")[0] for d in devices if d.messages]
    return {"attack": f"{in_flight} anonymous REGISTERs in flight together from one address (quota 200 an hour)",
            "identities_written": written, "registered": replies.count("REGISTERED"),
            "refused": replies.count("ERROR")}


def gameroom_fill(hours: float = 9.0) -> dict:
    """Anonymous creates from one address as fast as its quota allows for `hours`; nobody joins them."""
    h = shipped()
    body = json.dumps({"engine": "counter@1", "seed": 7, "players": 2}).encode()
    answers: dict[int, int] = {}
    attacker = {"X-Forwarded-For": "192.0.2.66"}  # the shipped listener trusts loopback's header
    for _ in range(int(hours * 3600 / 30)):
        status = h.http("POST", "/gameroom/create", body, attacker)[0]
        answers[status] = answers.get(status, 0) + 1
        h.advance(30)
    core = h.app("gameroom").core
    live = sum(1 for r in core.rooms.values() if r.ended is None)
    other = h.http("POST", "/gameroom/create", body, {"X-Forwarded-For": "198.51.100.7"})[0]
    return {"attack": f"anonymous gameroom creates from one address every 30 s for {hours:g} h, nobody joins",
            "answers": answers, "rooms_held_at_the_end": len(core.rooms), "live_rooms_of_the_address": live,
            "max_rooms": core.settings.max_rooms, "another_address_creates": other}


def process_figures():
    """The attacks on a relayd process, each on a fresh one."""
    import tempfile

    from tests import attacks, processes

    def fresh(relayd: str = "", **kwargs):
        directory = tempfile.mkdtemp(prefix="relayd-hostile-")
        port = processes.free_port()
        daemon = processes.Relayd(processes.shipped_config(directory, port, relayd), port, directory=directory,
                                  **kwargs)
        daemon.wait_ready()
        return daemon

    double = tempfile.mkdtemp(prefix="relayd-clock-")
    with open(os.path.join(double, "sitecustomize.py"), "w") as f:
        f.write(attacks.CLOCK_DOUBLE)
    daemon = fresh(env={"PYTHONPATH": double})
    try:
        yield attacks.stepped_clock(daemon)
    finally:
        daemon.stop()

    import resource

    daemon = fresh(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    try:
        yield attacks.low_descriptor_limit(daemon, 400)
    finally:
        daemon.stop()

    disk, why = processes.mount_tmpfs("2m")
    if disk is None:
        yield {"fault": "full disk", "not run": f"cannot mount a tmpfs: {why}"}
    else:
        daemon = fresh(f"store = {os.path.join(disk, 'relayd.sqlite3')}\n")
        try:
            yield attacks.full_disk(daemon, disk)
        finally:
            daemon.stop()
            processes.unmount(disk)

    runs = (
        ("", lambda d: attacks.deaf_phones(d, addresses=4, phones_per_address=24, frame_size=1000 * 1024,
                                           frames_per_phone=8, bytes_per_second=15 * 2**20)),
        ("address_byte_rate = 0\n", lambda d: {**attacks.groovejet_flood(
            d, hosts=20, snapshot_size=60000, seconds=10, host_bytes_per_second=4.25e6),
            "config": "address_byte_rate = 0 (no budget across an address's connections)"}),
        ("", lambda d: {**attacks.groovejet_flood(d, hosts=20, snapshot_size=60000, seconds=10,
                                                  host_bytes_per_second=4.25e6), "config": "shipped"}),
    )
    for extra, attack in runs:
        daemon = fresh(extra)
        try:
            yield attack(daemon)
        finally:
            daemon.stop()


if __name__ == "__main__":
    for figure in (groovejet_rooms(), wikispeedruns_flood(), wikispeedruns_flood(name="x" * 64),
                   clicker_registrations(), clicker_registrations_in_flight(), clicker_unknown_verbs(),
                   gameroom_fill()):
        print(json.dumps(figure))
    if "--processes" in sys.argv[1:]:
        for figure in process_figures():
            print(json.dumps(figure), flush=True)
