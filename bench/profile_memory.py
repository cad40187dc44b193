"""
Where an idle connection's memory goes: opens carparty phones on one relayd service over in-memory
transports (twisted.test.iosim, the test suite's Harness), each a raw upgrade request and a login,
and reports the Python allocations that stay, per connection and by allocation site (tracemalloc).

    .venv/bin/python bench/profile_memory.py [CONNECTIONS]

Kernel socket buffers and the real TCP transport are not in it (bench/run's RSS figure has them);
the iosim transport stands in for Twisted's, so its lines are left out of the per-site table.
"""

from __future__ import annotations

import base64
import gc
import os
import sys
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support import BASE_INI, Harness, make_config  # noqa: E402

APP = """
[app:carparty]
listeners = main
path = /carparty
"""

UPGRADE = (
    "GET /carparty/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def frame(text: str) -> bytes:
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + mask + masked


def main(count: int) -> None:
    # keepalive on, as in bench/run: each connection also has its place in the keepalive wheel
    base = BASE_INI.replace("[listener:main]\n", "[listener:main]\nmax_connections = 100000\nmax_connections_per_address = 0\n")
    base = base.replace("auto_ping_interval = 0", "auto_ping_interval = 10")
    h = Harness(make_config(APP, base=base, limits="rate_limit = 0\nbyte_rate = 0")).start()
    server = h.raw(UPGRADE.format(key=base64.b64encode(os.urandom(16)).decode()).encode())
    h.flush()
    server.transport.write(frame('{"action":"login_server","server_code":"MEM"}'))
    h.flush()
    gc.collect()
    tracemalloc.start(8)
    before = tracemalloc.take_snapshot()
    phones = []
    for i in range(count):
        key = base64.b64encode(os.urandom(16)).decode()
        phone = h.raw(UPGRADE.format(key=key).encode())
        phones.append(phone)
    h.flush()
    for i, phone in enumerate(phones):
        phone.transport.write(frame(f'{{"action":"login_client","server_code":"MEM","client_id":"{i}"}}'))
        phone.data = b""  # what the test client keeps is not the server's
    h.flush()
    open_now = h.service.listeners["main"].tracker.websockets()
    if len(open_now) != count + 1:
        raise SystemExit(f"only {len(open_now)} of {count + 1} WebSockets are open")
    logged_in = sum(1 for ws in open_now if getattr(ws, "session", None) is not None)
    if logged_in != count + 1:
        raise SystemExit(f"only {logged_in} of {count + 1} connections logged in")
    for phone in phones:
        phone.data = b""
    server.data = b""
    gc.collect()
    after = tracemalloc.take_snapshot()
    ignore = ("tracemalloc", "iosim.py", "support.py", "profile_memory.py")
    stats = [s for s in after.compare_to(before, "lineno") if not any(x in s.traceback[0].filename for x in ignore)]
    total = sum(s.size_diff for s in stats)
    print(f"{count} idle phones: {total / count:,.0f} bytes of Python allocations per connection (iosim excluded)")
    print(f"{'bytes/conn':>10}  {'blocks/conn':>11}  site")
    for s in sorted(stats, key=lambda s: -s.size_diff)[:20]:
        frame0 = s.traceback[0]
        where = f"{frame0.filename.split('site-packages/')[-1].split('/work/main/')[-1]}:{frame0.lineno}"
        print(f"{s.size_diff / count:10.0f}  {s.count_diff / count:11.2f}  {where}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
