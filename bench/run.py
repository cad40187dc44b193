"""
relayd's benchmark runner: the same scenario, with the same generator, against relayd and against
the peers a user would pick instead (Node `ws`, picows), in one invocation. Results are ratios
relayd / peer, pair by pair, because absolute numbers on shared machines drift.

Each server is pinned to one core (taskset -c 1) and the generator (bench/gen/wsgen.c, C on one
epoll loop, built here with cc) to the other; the server's CPU time and memory come from /proc, the
generator's CPU time from itself, so a run where the generator was the bottleneck shows it.

    bench/run [--smoke] [--servers relayd,ws,picows] [--only fanout,apps,latency,connections,churn,gameroom,cluster]

`apps` is the same many-in-flight fan-out through wikispeedruns (lobby prompt `refresh`) and clicker
(a scoring device's SCORE lines to the screens listening to it; relayd writes each score durably
before it acknowledges and delivers it, the peers keep nothing).

The cluster scenario runs relayd only: 1, 2 and 3 nodes with `[bus] backend = redis` on a private
redis-server, reported as the ratio to one node.

Writes bench/out/results.jsonl (one JSON line per measurement) and, unless --smoke, bench/results.md
(a partial run, with --only or --servers, writes its report to bench/out/results.md instead).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(BENCH)
OUT = os.path.join(BENCH, "out")
PYTHON = sys.executable
KEEPALIVE = 10  # seconds, the same for relayd and both peers

RELAYD_CONFIG = """
[relayd]
state_dir = {state}
log_level = warn
; the generator sends from one address: the budget across an address's connections is lifted with the
; other abuse limits
address_byte_rate = 0

[listener:main]
endpoint = tcp:{port}:interface=127.0.0.1
max_connections = 20000
max_connections_per_address = 0
metrics = yes

[limits]
rate_limit = 0
byte_rate = 0
auto_ping_interval = {keepalive}
auto_ping_timeout = {keepalive}

[app:carparty]
listeners = main
path = /carparty
; the game server's role has limits of its own (3000 messages/s): lifted like every client's
server_rate_limit = 0
server_byte_rate = 0

[app:wikispeedruns]
listeners = main
path = /wikispeedruns

[app:clicker]
listeners = main
path = /clicker
"""

# where each app's WebSocket is on relayd; the peers serve every protocol on "/"
RELAYD_PATHS = {"carparty": "/carparty/ws", "wikispeedruns": "/wikispeedruns", "clicker": "/clicker/ws"}

GAMEROOM_CONFIG = """
[app:gameroom]
listeners = main
path = /gameroom
create_token = bench-create-token-0123456789
max_rooms = 20000
max_players = 4
max_turn_rate = 10
"""

GAMEROOM_TOKEN = "bench-create-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(command: list[str], core: int) -> list[str]:
    if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1:
        return ["taskset", "-c", str(core), *command]
    return command


def _more_files():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _wait_listening(port: int, what: str) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


def _wait_ready(port: int) -> None:
    """Until relayd's /readyz answers 200 (started, connected to its bus)."""
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"relayd on port {port} did not become ready")


def build_generator(out: str) -> str:
    source = os.path.join(BENCH, "gen", "wsgen.c")
    binary = os.path.join(out, "wsgen")
    if not os.path.exists(binary) or os.path.getmtime(binary) < os.path.getmtime(source):
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise SystemExit("bench: a C compiler (cc) is needed to build the generator")
        subprocess.run([compiler, "-O2", "-o", binary, source], check=True)
    return binary


class Server:
    def __init__(self, name: str, extra_config: str = GAMEROOM_CONFIG, core: int = 1):
        self.name = name
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix=f"relayd-bench-{name}-")
        if name == "relayd":
            config = os.path.join(self.directory, "relayd.ini")
            with open(config, "w") as f:
                f.write(RELAYD_CONFIG.format(state=os.path.join(self.directory, "state"), port=self.port,
                                             keepalive=KEEPALIVE) + extra_config)
            twistd = os.path.join(os.path.dirname(PYTHON), "twistd")
            command = [twistd, "--nodaemon", "--pidfile=", "relayd", "--config", config]
            self.path = "/carparty/ws"
        elif name == "ws":
            command = ["node", os.path.join(BENCH, "peers", "ws_relay.js"), str(self.port), str(KEEPALIVE)]
            self.path = "/"
        elif name == "picows":
            command = [PYTHON, os.path.join(BENCH, "peers", "picows_relay.py"), str(self.port), str(KEEPALIVE)]
            self.path = "/"
        else:
            raise ValueError(name)
        self.process = subprocess.Popen(pinned(command, core), cwd=self.directory, preexec_fn=_more_files,
                                        stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.directory, "stderr"), "w"))
        _wait_listening(self.port, name)

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Generator:
    """One run of wsgen; `on` maps each phase line it prints to what the runner does before "go"."""

    def __init__(self, binary: str, mode: str, server: Server, app: str = "carparty", **options):
        path = RELAYD_PATHS[app] if server.name == "relayd" and app != "carparty" else server.path
        args = [binary, mode, f"port={server.port}", f"path={path}", f"app={app}",
                *[f"{k}={v}" for k, v in options.items()]]
        self.process = subprocess.Popen(pinned(args, 0), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        preexec_fn=_more_files)

    def run(self, on: dict) -> dict:
        result: dict = {}
        for line in self.process.stdout:
            phase = line.strip()
            if phase in on:
                on[phase]()
            if phase in ("READY", "OPEN"):
                self._say("go")
            elif phase == "DONE":
                self._say("bye")
            elif phase.startswith("{"):
                result = json.loads(phase)
        self.process.wait(timeout=60)
        return result

    def _say(self, word: str) -> None:
        self.process.stdin.write(word + "\n")
        self.process.stdin.flush()


def traffic(binary: str, server: Server, mode: str, app: str = "carparty", **options) -> dict:
    """A run whose server CPU is sampled between READY and DONE: the timed traffic only."""
    marks: dict = {}
    gen = Generator(binary, mode, server, app, **options)
    result = gen.run({"READY": lambda: marks.update(cpu0=server.cpu()), "DONE": lambda: marks.update(cpu1=server.cpu())})
    if "seconds" in result and "cpu1" in marks:
        server_cpu = marks["cpu1"] - marks["cpu0"]
        result.update(server_cpu_s=server_cpu, server_cpu_share=server_cpu / result["seconds"],
                      generator_cpu_share=result["generator_cpu_s"] / result["seconds"])
    result.update(server=server.name, server_rss_kib=rss_kib(server.pid))
    return result


APP_SCENARIOS = {"wikispeedruns": "wikispeedruns refresh", "clicker": "clicker scores"}


def fan_out(binary, server, receivers, mode, deliveries, app="carparty"):
    window = 64 if mode == "many" else 1
    result = traffic(binary, server, "fanout", app, receivers=receivers, window=window,
                     messages=max(10, deliveries // receivers))
    suffix = f" ({APP_SCENARIOS[app]})" if app in APP_SCENARIOS else ""
    result.update(scenario=f"fan-out {mode} N={receivers}{suffix}")
    return result


def latency(binary, server, receivers, rate, seconds):
    result = traffic(binary, server, "rate", receivers=receivers, rate=rate, seconds=seconds)
    result.update(scenario=f"latency {receivers} x {rate}/s")
    if result.get("delivered"):
        result["server_cpu_us_per_delivery"] = result["server_cpu_s"] / result["delivered"] * 1e6
    return result


def connections(binary, server, count, hold):
    """Handshakes/s while `count` phones connect, then memory and CPU while they sit idle."""
    marks: dict = {}

    def opened():
        marks.update(cpu1=server.cpu(), rss1=rss_kib(server.pid))
        time.sleep(hold)
        marks.update(cpu2=server.cpu())

    gen = Generator(binary, "connect", server, connections=count, concurrency=100)
    result = gen.run({"READY": lambda: marks.update(cpu0=server.cpu(), rss0=rss_kib(server.pid)), "OPEN": opened})
    result.update(server=server.name, scenario=f"connections {count}")
    if "cpu2" in marks:
        result.update(
            handshake_server_cpu_share=(marks["cpu1"] - marks["cpu0"]) / result["open_seconds"],
            rss_kib_before=marks["rss0"], rss_kib_open=marks["rss1"],
            rss_bytes_per_connection=(marks["rss1"] - marks["rss0"]) * 1024 / count,
            idle_seconds=hold, idle_cpu_share=(marks["cpu2"] - marks["cpu1"]) / hold,
            generator_cpu_share=result["generator_cpu_s"] / max(result["seconds"], 1e-9),
        )
    return result


def churn(binary, server, seconds):
    result = traffic(binary, server, "churn", concurrency=50, seconds=seconds)
    result.update(scenario="churn")
    return result


def _metric_buckets(text: str, name: str, app: str) -> dict[float, float]:
    pattern = re.compile(rf'^{name}_bucket\{{app="{app}",le="([^"]+)"\}} (\S+)$', re.M)
    return {float(le): float(v) for le, v in pattern.findall(text)}


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def _p99_bound(before: dict, after: dict) -> tuple[float, int]:
    """The smallest histogram bound under which 99% of the window's observations fell, and their count."""
    total = after.get(float("inf"), 0) - before.get(float("inf"), 0)
    for bound in sorted(after):
        if total and (after[bound] - before.get(bound, 0)) / total >= 0.99:
            return bound, int(total)
    return float("inf"), int(total)


def gameroom(binary, rooms, seconds, out):
    """
    `rooms` rooms of 4 players at 10 turns/s on a fresh relayd: how long master packets waited after
    their turn could close (p99, relayd's relayd_turn_close_delay_seconds), tick lateness, turn rate.
    """
    server = Server("relayd")
    try:
        paths = []
        for _ in range(rooms):
            body = json.dumps({"engine": "counter@1", "seed": 7, "players": 4}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{server.port}/gameroom/create", data=body, method="POST",
                                             headers={"Authorization": f"Bearer {GAMEROOM_TOKEN}",
                                                      "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as r:
                play = json.loads(r.read())["play_url"]
            paths.append("/" + play.split("/", 3)[3])
        rooms_file = os.path.join(out, "rooms.txt")
        with open(rooms_file, "w") as f:
            f.write("\n".join(paths) + "\n")
        marks: dict = {}

        def histograms():
            text = _scrape(server.port)
            return {name: _metric_buckets(text, f"relayd_{name}_seconds", "gameroom") for name in ("turn_close_delay", "tick_lateness")}

        def ready():
            marks.update(cpu0=server.cpu(), before=histograms())

        def done():
            marks.update(cpu1=server.cpu(), after=histograms())

        server.path = "/"
        result = Generator(binary, "gameroom", server, rooms_file=rooms_file, seconds=seconds, concurrency=100).run(
            {"READY": ready, "DONE": done})
        result.update(server="relayd", scenario=f"gameroom rooms={rooms}", server_rss_kib=rss_kib(server.pid))
        if "after" in marks:
            bound, closes = _p99_bound(marks["before"]["turn_close_delay"], marks["after"]["turn_close_delay"])
            tick_bound, ticks = _p99_bound(marks["before"]["tick_lateness"], marks["after"]["tick_lateness"])
            result.update(close_delay_p99_bound_s=bound, closes=closes, tick_lateness_p99_bound_s=tick_bound, ticks=ticks,
                          server_cpu_share=(marks["cpu1"] - marks["cpu0"]) / result["seconds"],
                          generator_cpu_share=result["generator_cpu_s"] / result["seconds"])
        return result
    finally:
        server.stop()


class Redis:
    """A private redis-server for the cluster runs, pinned beside the generator, keeping nothing on disk."""

    def __init__(self, core: int = 0):
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="relayd-bench-redis-")
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("bench: the cluster scenario needs redis-server")
        self.process = subprocess.Popen(
            pinned([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", self.directory], core),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(self.port, "redis-server")

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=15)


class Nodes:
    """Several relayd nodes on one Redis, seen by the runner as one server (CPU summed)."""

    def __init__(self, count: int, redis: Redis, cores: list[int]):
        bus = f"\n[bus]\nbackend = redis\nurl = redis://127.0.0.1:{redis.port}/0\n"
        self.redis = redis
        self.nodes = []
        try:
            for i in range(count):
                self.nodes.append(Server("relayd", bus, core=cores[i % len(cores)]))
        except BaseException:
            self.stop()
            raise
        for node in self.nodes:
            _wait_ready(node.port)  # listening is not enough: a node takes carparty logins once its bus is up
        self.name, self.port, self.path, self.pid = "relayd", self.nodes[0].port, self.nodes[0].path, self.nodes[0].pid
        self.ports = ",".join(str(n.port) for n in self.nodes)

    def cpu(self) -> float:
        return sum(n.cpu() for n in self.nodes)

    def stop(self):
        for node in self.nodes:
            node.stop()


def cluster(binary, redis: Redis, nodes: int, receivers: int, deliveries: int, cores: list[int]):
    """Many-in-flight fan-out with the game server and its phones spread over `nodes` nodes of one cluster."""
    group = Nodes(nodes, redis, cores)
    try:
        marks: dict = {}
        gen = Generator(binary, "fanout", group, ports=group.ports, receivers=receivers, window=64,
                        messages=max(10, deliveries // receivers))
        result = gen.run({"READY": lambda: marks.update(cpu0=group.cpu(), redis0=redis.cpu()),
                          "DONE": lambda: marks.update(cpu1=group.cpu(), redis1=redis.cpu())})
        result.update(server="relayd", scenario=f"cluster N={receivers} nodes={nodes}", nodes=nodes)
        if "cpu1" in marks:
            result.update(server_cpu_share=(marks["cpu1"] - marks["cpu0"]) / result["seconds"],
                          redis_cpu_share=(marks["redis1"] - marks["redis0"]) / result["seconds"],
                          generator_cpu_share=result["generator_cpu_s"] / result["seconds"])
        return result
    finally:
        group.stop()


def gameroom_holds(r: dict) -> bool:
    """Every room at its turn rate, every player started, and master packets out within 10 ms (p99)."""
    return (r.get("close_delay_p99_bound_s", 1) <= 0.010 and r.get("turns_per_room_s", 0) >= 9.5
            and r.get("started_players") == r.get("players") and not r.get("game_errors"))


# ---- the report ----------------------------------------------------------------------------------

def _table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows])


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _pct(v) -> str:
    return f"{v:.0%}" if v is not None else "-"


GENERATOR_LIMIT = 0.70
"""A row whose generator used more of its core than this measured the generator, not the server: not valid."""


def _generator(share) -> str:
    if share is not None and share > GENERATOR_LIMIT:
        return f"{share:.0%} **not valid**"
    return _pct(share)


def markdown(results: list[dict], servers: list[str]) -> str:
    peers = [s for s in servers if s != "relayd"]
    by = {(r["scenario"], r["server"]): r for r in results}
    scenarios = list(dict.fromkeys(r["scenario"] for r in results))
    parts = []

    def family(prefix):
        return [s for s in scenarios if s.startswith(prefix)]

    def get(scenario, server, key):
        return by.get((scenario, server), {}).get(key)

    def gen_max(scenario):
        shares = [get(scenario, s, "generator_cpu_share") for s in servers]
        return max((s for s in shares if s is not None), default=None)

    if family("fan-out"):
        head = ["scenario", *[f"{s} deliveries/s" for s in servers], *[f"relayd / {p}" for p in peers],
                *[f"{s} CPU" for s in servers], *[f"generator CPU ({s})" for s in servers]]
        rows = []
        for sc in family("fan-out"):
            rates = {s: get(sc, s, "deliveries_per_s") for s in servers}
            rows.append([sc, *[f"{rates[s]:,.0f}" if rates[s] else "-" for s in servers],
                         *[_ratio(rates.get("relayd"), rates[p]) for p in peers],
                         *[_pct(get(sc, s, "server_cpu_share")) for s in servers],
                         *[_generator(get(sc, s, "generator_cpu_share")) for s in servers]])
        parts.append("## Fan-out\n\nDeliveries per second of 100-byte text frames, one game server to N phones, "
                     "with up to 64 frames in flight per phone (many) or one (lock-step). The rows marked "
                     "(wikispeedruns refresh) fan out a lobby's `refresh` to N pages; (clicker scores) a scoring "
                     "device's SCORE lines to N judges' screens, each score written durably by relayd before it "
                     "is acknowledged and delivered (the peers keep nothing). A server's figure whose generator "
                     f"used more than {GENERATOR_LIMIT:.0%} of its core is marked not valid: the generator, not "
                     "the server, may have set its pace, and a ratio to it is not valid either.\n\n" + _table(head, rows))
    if family("latency"):
        head = ["scenario", *[f"{s} p50 / p99 ms" for s in servers], *[f"{s} CPU µs/delivery" for s in servers],
                *[f"relayd / {p} p99" for p in peers], *[f"relayd / {p} CPU/delivery" for p in peers],
                "lost", "generator CPU (max)"]
        rows = []
        for sc in family("latency"):
            cpu = {s: get(sc, s, "server_cpu_us_per_delivery") for s in servers}
            p99 = {s: get(sc, s, "p99_ms") for s in servers}
            rows.append([sc, *[f"{get(sc, s, 'p50_ms'):.2f} / {p99[s]:.2f}" if p99[s] is not None else "-" for s in servers],
                         *[f"{cpu[s]:.2f}" if cpu[s] else "-" for s in servers],
                         *[_ratio(p99.get("relayd"), p99[p]) for p in peers], *[_ratio(cpu.get("relayd"), cpu[p]) for p in peers],
                         str(sum(get(sc, s, "lost") or 0 for s in servers)), _generator(gen_max(sc))])
        parts.append("## Latency at a fixed rate\n\nOne sender at a fixed rate of 100-byte frames stamped with their send "
                     "time; p50/p99 from send to receipt over every delivery after a 0.5 s warm-up.\n\n" + _table(head, rows))
    if family("connections"):
        head = ["scenario", "server", "handshakes/s", "server CPU while connecting", "RSS bytes / idle connection",
                f"idle CPU (keepalive every {KEEPALIVE:g} s)", "generator CPU"]
        rows = []
        for sc in family("connections"):
            for s in servers:
                r = by.get((sc, s))
                if r and "idle_cpu_share" in r:
                    rows.append([sc, s, f"{r['handshakes_per_s']:,.0f}", _pct(r["handshake_server_cpu_share"]),
                                 f"{r['rss_bytes_per_connection']:,.0f}", f"{r['idle_cpu_share']:.2%}",
                                 _pct(r["generator_cpu_share"])])
            for p in peers:
                rows.append([sc, f"relayd / {p}", _ratio(get(sc, "relayd", "handshakes_per_s"), get(sc, p, "handshakes_per_s")),
                             "", _ratio(get(sc, "relayd", "rss_bytes_per_connection"), get(sc, p, "rss_bytes_per_connection")),
                             "", ""])
        for sc in family("churn"):
            for s in servers:
                r = by.get((sc, s))
                if r and "cycles_per_s" in r:
                    rows.append(["churn (connect, log in, close handshake; 50 at a time)", s,
                                 f"{r['cycles_per_s']:,.0f} cycles/s", _pct(r.get("server_cpu_share")), "", "",
                                 _pct(r.get("generator_cpu_share"))])
            for p in peers:
                rows.append(["churn", f"relayd / {p}", _ratio(get(sc, "relayd", "cycles_per_s"), get(sc, p, "cycles_per_s")),
                             "", "", "", ""])
        parts.append("## Connections\n\nPhones opened 100 handshakes at a time, each logging in to one game server, "
                     "then held idle; memory is the server's RSS growth divided by the connections.\n\n" + _table(head, rows))
    if family("gameroom"):
        head = ["rooms x 4 players", "turns/s per room", "master packet delay p99", "turns closed", "tick lateness p99",
                "server CPU", "generator CPU", "holds"]
        rows = []

        def bound_ms(bound):
            return f"<= {bound * 1000:g} ms" if bound not in (None, float("inf")) else "> 1 s"

        for sc in family("gameroom"):
            r = by[(sc, "relayd")]
            rows.append([str(r["rooms"]), f"{r.get('turns_per_room_s', 0):.2f}", bound_ms(r.get("close_delay_p99_bound_s")),
                         str(r.get("closes", "-")), bound_ms(r.get("tick_lateness_p99_bound_s")),
                         _pct(r.get("server_cpu_share")), _generator(r.get("generator_cpu_share")),
                         "yes" if gameroom_holds(r) else "no"])
        parts.append("## Gameroom\n\nRooms of 4 players at 10 turns/s (`max_turn_rate = 10`, players answer each master "
                     "packet at once), rooms increased until a step does not hold. The master packet delay is the time "
                     "from when a turn could close (its last packet in, or its deadline passed: with players this "
                     "quick, the rate cap's gate) to its master packet, from relayd's "
                     "`relayd_turn_close_delay_seconds` histogram (its bucket bounds) over the window; a step holds "
                     "when its p99 is within 10 ms and every room keeps 9.5 turns/s.\n\n" + _table(head, rows))
    if family("cluster"):
        head = ["scenario", "deliveries/s", "ratio to 1 node", "relayd CPU (all nodes)", "redis CPU", "generator CPU"]
        rows = []
        for sc in family("cluster"):
            r = by[(sc, "relayd")]
            one = by.get((sc.rsplit(" nodes=", 1)[0] + " nodes=1", "relayd"), {})
            rows.append([sc, f"{r.get('deliveries_per_s', 0):,.0f}",
                         _ratio(r.get("deliveries_per_s"), one.get("deliveries_per_s")),
                         _pct(r.get("server_cpu_share")), _pct(r.get("redis_cpu_share")), _pct(r.get("generator_cpu_share"))])
        parts.append("## Several nodes (Redis backplane)\n\nMany-in-flight fan-out (64 frames in flight per phone) "
                     "with `[bus] backend = redis`, the game server and its phones spread round-robin over 1, 2 and 3 "
                     "relayd nodes on one private redis-server (pinned with the generator); phone i on node i mod n, "
                     "so with n nodes (n-1)/n of the deliveries cross Redis. The 1-node run uses the same Redis "
                     "backend.\n\n" + _table(head, rows))
    return "\n\n".join(parts)


def targets(results: list[dict]) -> str:
    """The targets of the suite, each with the ratio measured in this run and whether it is met."""
    by = {(r["scenario"], r["server"]): r for r in results}

    def value(scenario, server, key):
        return by.get((scenario, server), {}).get(key)

    def ratio(scenario, key, peer="ws"):
        a, b = value(scenario, "relayd", key), value(scenario, peer, key)
        return a / b if a and b else None

    def generator(scenario, peer="ws"):
        shares = [value(scenario, s, "generator_cpu_share") for s in ("relayd", peer)]
        return max((s for s in shares if s is not None), default=None)

    rows = []

    def row(target, measured, met, scenario=None, peer="ws"):
        busy = generator(scenario, peer) if scenario else None
        if busy is not None and busy > GENERATOR_LIMIT:
            rows.append([target, f"{measured} (generator at {busy:.0%})", "**not valid**"])
            return
        rows.append([target, measured, "-" if met is None else ("met" if met else "**not met**")])

    for scenario, goal, text in (("fan-out many N=1", 0.8, "One-to-one relaying (one sender, one receiver): >= 0.8x ws"),
                                 ("fan-out lockstep N=1000", 1.15, "Lock-step fan-out to 1000: >= 1.15x ws"),
                                 ("fan-out many N=100", 5, "Many-in-flight fan-out to 100: >= 5x ws"),
                                 ("fan-out many N=1000", 5, "Many-in-flight fan-out to 1000: >= 5x ws")):
        r = ratio(scenario, "deliveries_per_s")
        row(text, f"{r:.2f}x" if r else "-", r >= goal if r else None, scenario)
    lat = "latency 1000 x 50/s"
    r = ratio(lat, "p99_ms")
    row("Latency 1000 x 50/s: p99 <= ws p99", f"{r:.2f}x ({value(lat, 'relayd', 'p99_ms') or 0:.2f} ms vs "
        f"{value(lat, 'ws', 'p99_ms') or 0:.2f} ms)" if r else "-", r <= 1 if r else None, lat)
    r = ratio(lat, "server_cpu_us_per_delivery")
    row("Latency 1000 x 50/s: server CPU per delivery <= 0.8x ws", f"{r:.2f}x" if r else "-", r <= 0.8 if r else None, lat)
    conn = next((s for s, _ in by if s.startswith("connections")), None)
    if conn:
        r = ratio(conn, "handshakes_per_s")
        row("Handshakes/s >= 0.9x ws", f"{r:.2f}x" if r else "-", r >= 0.9 if r else None)
        r = ratio(conn, "rss_bytes_per_connection")
        row("Resident memory per idle connection <= 1.5x ws", f"{r:.2f}x" if r else "-", r <= 1.5 if r else None)
        idle = value(conn, "relayd", "idle_cpu_share")
        row(f"{conn.split()[1]} idle connections with keepalive (every {KEEPALIVE:g} s): < 2% of a core",
            f"{idle:.2%}" if idle is not None else "-", idle < 0.02 if idle is not None else None)
    for n in (10, 100):
        scenario = f"fan-out many N={n} (clicker scores)"
        for peer in ("ws", "picows"):
            r = ratio(scenario, "deliveries_per_s", peer)
            if value(scenario, peer, "deliveries_per_s"):
                row(f"clicker scores to {n} listeners, durable before SCORED: >= 0.5x {peer}",
                    f"{r:.2f}x" if r else "-", r >= 0.5 if r else None, scenario, peer)
    rooms = [r for r in results if r["scenario"].startswith("gameroom")]
    if rooms:
        held = max((r["rooms"] for r in rooms if gameroom_holds(r)), default=0)
        row("Gameroom: >= 500 rooms of 4 players at 10 turns/s, master packet out < 10 ms (p99) after the turn could close",
            f"{held} rooms held" + ("" if held else f" (the first step, {rooms[0]['rooms']}, did not)"), held >= 500)
    return "## Targets\n\nRatios relayd / peer from this run. Where a target is not met, " \
           "[docs/performance.md](../docs/performance.md) says where the time goes and what would close it. " \
           f"A target whose rows' generator used more than {GENERATOR_LIMIT:.0%} of its core is not valid.\n\n" + \
           _table(["target", "measured", ""], rows)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, CPython {platform.python_version()}, "
            f"Node {node}; server pinned to core 1, generator (bench/gen/wsgen.c) to core 0")


def write_report(results: list[dict], servers: list[str], path: str = os.path.join(BENCH, "results.md")) -> None:
    with open(path, "w") as f:
        f.write(f"# Benchmark results\n\nMachine: {machine()}.\n\nCommand: `bench/run`\n\n{targets(results)}\n\n"
                f"{markdown(results, servers)}\n")


def main(argv=None) -> int:
    global KEEPALIVE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds of each scenario, for the test suite")
    parser.add_argument("--servers", default="relayd,ws,picows")
    parser.add_argument("--only", default="fanout,apps,latency,connections,churn,gameroom,cluster")
    parser.add_argument("--keepalive", type=float, default=KEEPALIVE,
                        help="seconds between keepalive pings, for relayd and both peers (default %(default)s)")
    parser.add_argument("--node-cores", default="1", help="cores the cluster scenario's relayd nodes are pinned to, round-robin")
    parser.add_argument("--receivers", default="1,10,100,1000")
    parser.add_argument("--deliveries", type=int, default=1000000, help="deliveries per many-in-flight scenario")
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--report", metavar="JSONL", help="only write bench/results.md from an earlier run's results.jsonl")
    args = parser.parse_args(argv)
    KEEPALIVE = args.keepalive
    if args.report:
        with open(args.report) as f:
            results = [json.loads(line) for line in f if line.strip()]
        write_report(results, sorted({r["server"] for r in results}, key=["relayd", "ws", "picows"].index))
        return 0
    servers, only = args.servers.split(","), set(args.only.split(","))
    receivers = [int(n) for n in args.receivers.split(",")]
    deliveries = args.deliveries
    latencies, idle, hold, churn_s, rate_s = [(100, 500), (1000, 50)], 10000, max(2 * KEEPALIVE, 20), 3, 5
    room_steps, room_s = [100, 250, 500, 750, 1000, 1500, 2000], 10
    cluster_receivers, cluster_deliveries = 300, 300000
    # the other apps' fan-out: lobby prompt refresh to many pages, scores to a few judges' screens
    app_receivers, app_deliveries = {"wikispeedruns": [100, 1000], "clicker": [10, 100]}, 200000
    if args.smoke:
        receivers, deliveries = [1, 10], 5000
        latencies, idle, hold, churn_s, rate_s = [(10, 100)], 200, 1, 1, 1
        room_steps, room_s = [5], 2
        cluster_receivers, cluster_deliveries = 10, 2000
        app_receivers, app_deliveries = {"wikispeedruns": [10], "clicker": [10]}, 2000
    os.makedirs(args.out, exist_ok=True)
    binary = build_generator(args.out)
    results = []

    def record(result):
        results.append(result)
        print(json.dumps(result), flush=True)

    for name in servers:
        server = Server(name)
        try:
            if "fanout" in only:
                for mode in ("many", "lockstep"):
                    for n in receivers:
                        # lock-step costs a round trip per message: fewer deliveries keep it in proportion
                        count = deliveries if mode == "many" else max(n * 10, deliveries // 5)
                        record(fan_out(binary, server, n, mode, count))
            if "apps" in only:
                for app, counts in app_receivers.items():
                    for n in counts:
                        record(fan_out(binary, server, n, "many", app_deliveries, app))
            if "latency" in only:
                for n, rate in latencies:
                    record(latency(binary, server, n, rate, rate_s))
            if "connections" in only:
                record(connections(binary, server, idle, hold))
            if "churn" in only:
                record(churn(binary, server, churn_s))
        finally:
            server.stop()
    if "gameroom" in only and "relayd" in servers:
        for rooms in room_steps:
            result = gameroom(binary, rooms, room_s, args.out)
            record(result)
            if not gameroom_holds(result):
                break
    if "cluster" in only and "relayd" in servers:
        redis = Redis()
        try:
            cores = [int(c) for c in args.node_cores.split(",")]
            for nodes in (1, 2, 3):
                record(cluster(binary, redis, nodes, cluster_receivers, cluster_deliveries, cores))
        finally:
            redis.stop()
    with open(os.path.join(args.out, "results.jsonl"), "w") as f:
        for result in results:
            f.write(json.dumps(result) + "\n")
    failed = [r for r in results if r.get("error") or r.get("lost") or r.get("closed_early") or r.get("malformed")
              or r.get("errors") or r.get("game_errors")]
    if not args.smoke:
        # a partial run (--only, --servers) leaves the full run's bench/results.md alone
        partial = only != set(parser.get_default("only").split(",")) or servers != parser.get_default("servers").split(",")
        write_report(results, servers, os.path.join(args.out, "results.md") if partial else os.path.join(BENCH, "results.md"))
    print(markdown(results, servers))
    for r in failed:
        print("incomplete:", json.dumps(r))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
