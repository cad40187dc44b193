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
