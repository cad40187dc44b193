"""
Attacks on a relayd process, as an anonymous client would make them, each reporting what it cost
relayd: used by the adversity tests (small, bounded) and bench/hostile.py (at the scale measured in
docs/security.md). Plain sockets and threads; every wait is bounded and says what it waited for.
"""

from __future__ import annotations

import json
import threading
import time

from tests.processes import Relayd, WebSocket


def _drain(ws: WebSocket, counts: dict, key: str) -> None:
    """Read frames until the connection ends, counting them."""
    try:
        while True:
            opcode, _ = ws.receive()
            if opcode == 8:
                return
            counts[key] = counts.get(key, 0) + 1
    except (OSError, ConnectionError):
        return


def deaf_phones(relayd: Relayd, *, addresses: int, phones_per_address: int, frame_size: int,
                frames_per_phone: int, settle: float = 8.0, bytes_per_second: float = 12 * 2**20) -> dict:
    """
    An anonymous carparty game server sends distinct frames (each to one phone, by receiver_id) to
    phones that never read (4 KB receive buffers), from `addresses` loopback addresses; one phone reads.
    Reports relayd's RSS before, at its peak, and `settle` seconds after everything closed, the slow
    consumers closed by reason, and whether the reading phone got every frame sent to it.
    """
    port = relayd.port
    before = relayd.rss()
    server = WebSocket(port, "/carparty/ws")
    server.send_json({"action": "login_server", "server_code": "DEAF"})
    events: dict = {}
    threading.Thread(target=_drain, args=(server, events, "server"), daemon=True).start()
    deaf, phones = [], []
    for a in range(addresses):
        for n in range(phones_per_address):
            phone = WebSocket(port, "/carparty/ws", source=f"127.0.0.{2 + a}", receive_buffer=4096)
            phone.send_json({"action": "login_client", "server_code": "DEAF", "client_id": f"{a}-{n}"})
            deaf.append(f"{a}-{n}")
            phones.append(phone)  # held open, never read
    reader = WebSocket(port, "/carparty/ws", source="127.0.0.100")
    reader.send_json({"action": "login_client", "server_code": "DEAF", "client_id": "reader"})
    got: dict = {}
    threading.Thread(target=_drain, args=(reader, got, "reader"), daemon=True).start()
    time.sleep(0.5)  # every login handled before the first frame

    peak = [before]
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            peak[0] = max(peak[0], relayd.rss())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    pad = "x" * frame_size
    started = time.monotonic()
    sent = 0
    for i in range(frames_per_phone):
        for receiver in deaf + ["reader"]:
            # distinct frames: nothing is shared between receivers
            server.send(json.dumps({"receiver_id": receiver, "n": i, "pad": pad}))
            sent += 1
            ahead = started + sent * frame_size / bytes_per_second - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    sending = time.monotonic() - started
    time.sleep(2.0)
    held_at_end = relayd.metric("relayd_send_backlog_bytes")
    closed = {why: relayd.metric("relayd_slow_consumers_total", app="carparty", reason=why)
              for why in ("size", "age", "total", "address")}
    deadline = time.monotonic() + 10
    while got.get("reader", 0) < frames_per_phone and time.monotonic() < deadline:
        time.sleep(0.05)
    reader_got = got.get("reader", 0)
    for ws in (server, reader, *phones):
        ws.close()
    time.sleep(settle)  # the relay closes what is left; memory is given back every 5 s
    sampling.set()
    sampler.join()
    return {
        "attack": f"carparty: {addresses * phones_per_address} deaf phones on {addresses} addresses, "
                  f"{frames_per_phone} distinct {frame_size // 1024} KB frames each",
        "frames_sent": sent, "seconds_sending": round(sending, 1),
        "rss_before_mb": round(before / 2**20, 1), "rss_peak_mb": round(peak[0] / 2**20, 1),
        "rss_after_mb": round(relayd.rss() / 2**20, 1),
        "backlog_limit_mb": round(relayd.metric("relayd_send_backlog_limit_bytes") / 2**20, 1),
        "backlog_held_mb_after_sending": round(held_at_end / 2**20, 1),
        "slow_consumers_closed": closed,
        "reader_frames": f"{reader_got} of {frames_per_phone}",
    }


def _frame(payload: bytes) -> bytes:
    """A masked client text frame (zero mask) ready to send again and again."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    elif n < 65536:
        header = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


def _percentile(values: list, fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def clicker_latency(relayd: Relayd, *, devices: int, seconds: float, rate: float = 10.0,
                    source: str = "127.0.0.50") -> list:
    """`devices` clicker devices each sending `rate` SCOREs a second for `seconds`; SCORE-to-SCORED times in ms."""
    port = relayd.port
    latencies: list = []
    lock = threading.Lock()

    def device(index: int):
        ws = WebSocket(port, "/clicker/ws", source=source)
        ws.send("REGISTER")
        ws.receive()
        stop = time.monotonic() + seconds
        n = 0
        while time.monotonic() < stop:
            n += 1
            sent = time.monotonic()
            ws.send(f"SCORE {n} {n * 7}")
            while True:
                _, payload = ws.receive()
                if payload == f"SCORED {n}".encode():
                    break
            with lock:
                latencies.append((time.monotonic() - sent) * 1000)
            time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - sent)))
        ws.close()

    threads = [threading.Thread(target=device, args=(i,), daemon=True) for i in range(devices)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return latencies


def groovejet_flood(relayd: Relayd, *, hosts: int, snapshot_size: int, seconds: float,
                    host_bytes_per_second: float, devices: int = 10) -> dict:
    """
    `hosts` anonymous groovejet hosts on one address send snapshots of `snapshot_size` bytes (each to
    be made durable) at `host_bytes_per_second` each, while clicker devices on another address score;
    reports the devices' SCORE-to-SCORED times alone, then during the flood, and the flood's rate.
    """
    port = relayd.port
    quiet = clicker_latency(relayd, devices=devices, seconds=min(5.0, seconds))
    flooding = threading.Event()
    sent = [0]
    lock = threading.Lock()

    def host(index: int):
        ws = WebSocket(port, "/groovejet", source="127.0.0.2")
        ws.send_json({"type": "createRoom"})
        threading.Thread(target=_drain, args=(ws, {}, "acks"), daemon=True).start()
        frame = _frame(json.dumps({"type": "snapshot", "data": {"state": "s" * snapshot_size}}).encode())
        started = time.monotonic()
        count = 0
        while not flooding.is_set():
            try:
                ws.sock.sendall(frame)
            except OSError:
                return
            count += 1
            with lock:
                sent[0] += len(frame)
            ahead = started + count * len(frame) / host_bytes_per_second - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        ws.close()

    threads = [threading.Thread(target=host, args=(i,), daemon=True) for i in range(hosts)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(1.0)
    loaded = clicker_latency(relayd, devices=devices, seconds=seconds)
    flooding.set()
    elapsed = time.monotonic() - started
    for t in threads:
        t.join(10)
    return {
        "attack": f"groovejet: {hosts} anonymous hosts on one address sending {snapshot_size // 1000} KB snapshots",
        "flood_mb_per_s_offered": round(sent[0] / elapsed / 1e6, 1),
        "clicker_scored_ms_alone": {"p50": round(_percentile(quiet, 0.5), 1), "p99": round(_percentile(quiet, 0.99), 1),
                                    "n": len(quiet)},
        "clicker_scored_ms_during_flood": {"p50": round(_percentile(loaded, 0.5), 1),
                                           "p99": round(_percentile(loaded, 0.99), 1), "n": len(loaded)},
        "address_throttled_reads": relayd.metric("relayd_address_throttled_total", app="groovejet"),
    }


# ---- a misbehaving machine ---------------------------------------------------------------------

# a stand-in for the system clock, loaded by sitecustomize: time.time() stepped back 30 s at each
# SIGUSR2, the monotonic clock untouched
CLOCK_DOUBLE = """
import signal, time
_wall = time.time
_offset = [0.0]
time.time = lambda: _wall() + _offset[0]
def _step(signum, frame):
    _offset[0] -= 30.0
signal.signal(signal.SIGUSR2, _step)
"""


def stepped_clock(relayd: Relayd) -> dict:
    """A connection that sends nothing, the wall clock stepped back 30 s half a second later: when is it cut?"""
    import os
    import signal
    import socket

    silent = socket.create_connection(("127.0.0.1", relayd.port))
    opened = time.monotonic()
    time.sleep(0.5)
    os.kill(relayd.pid, signal.SIGUSR2)
    silent.settimeout(20)
    try:
        ended = "closed" if silent.recv(1) == b"" else "data"
    except socket.timeout:
        ended = "still open after 20 s"
    except ConnectionResetError:
        ended = "reset"
    finally:
        silent.close()
    return {"fault": "wall clock stepped back 30 s while a connection sends no request (head deadline 5 s)",
            "connection": ended, "seconds_until_cut": round(time.monotonic() - opened, 1),
            "healthz": relayd.get("/healthz")[0]}


def full_disk(relayd: Relayd, disk: str) -> dict:
    """The store's disk filled up while clicker devices register, then freed: answers, readiness, log."""
    import os

    first = WebSocket(relayd.port, "/clicker/ws")
    first.send("REGISTER")
    before = first.receive()[1].split(b" ")[0].decode()
    filler = os.path.join(disk, "filler")
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass  # the disk is full
    answers = []
    close = None
    for _ in range(50):  # until a write needs space the database does not have
        device = WebSocket(relayd.port, "/clicker/ws")
        device.send("REGISTER")
        answers.append(device.receive()[1].decode())
        if answers[-1].startswith("ERROR"):
            close = int.from_bytes(device.receive()[1][:2], "big")
            break
    readyz_full = relayd.get("/readyz")
    os.unlink(filler)
    freed = time.monotonic()
    while relayd.get("/readyz")[0] != 200 and time.monotonic() - freed < 15:
        time.sleep(0.1)
    ready_after = round(time.monotonic() - freed, 1)
    again = WebSocket(relayd.port, "/clicker/ws")
    again.send("REGISTER")
    log = relayd.log()
    return {"fault": "state dir on a 2 MiB tmpfs that fills up, then is freed",
            "register_before": before, "registers_until_refused": len(answers), "refused_with": answers[-1],
            "close_code": close, "readyz_while_full": readyz_full, "seconds_to_ready_after_freeing": ready_after,
            "register_after": again.receive()[1].split(b" ")[0].decode(),
            "store_log_lines": log.count("store: writes failing"), "tracebacks": log.count("Traceback")}


def low_descriptor_limit(relayd: Relayd, connections: int = 400) -> dict:
    """`connections` WebSocket upgrades from two addresses at a low descriptor limit; health and metrics meanwhile."""
    clients, refused = [], 0
    for n in range(connections):
        try:
            ws = WebSocket(relayd.port, "/clicker/ws", source=f"127.0.0.{2 + n % 2}", timeout=5)
        except (OSError, ConnectionError):
            refused += 1
            continue
        if ws.status == 101:
            clients.append(ws)
        else:
            refused += 1
            ws.close()
    health = [relayd.get("/healthz")[0] for _ in range(5)]
    metrics = [relayd.get("/metrics")[0] for _ in range(5)]
    for ws in clients:
        ws.close()
    log = relayd.log()
    return {"fault": f"{connections} WebSocket upgrades at a low descriptor limit", "served": len(clients),
            "refused": refused, "healthz": health, "metrics": metrics,
            "lowered": [line.split("] ", 1)[1] for line in log.splitlines() if "descriptor limit" in line],
            "emfile_lines": log.count("EMFILE"), "log_lines": len(log.splitlines())}
