"""
relayd's benchmark runner: the same scenario, with the same generator, against relayd and against
the peers a user would pick instead (Node `ws`, picows), in one invocation. Results are ratios
relayd / peer, pair by pair, because absolute numbers on shared machines drift.

Each server is pinned to one core (taskset -c 1) and the generator to the other; the server's CPU
time comes from /proc, the generator's from itself, so a run where the generator was the bottleneck
shows it.

    bench/run [--smoke] [--servers relayd,ws,picows] [--receivers 1,10,100,1000]

Writes bench/out/results.jsonl and bench/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(BENCH)
OUT = os.path.join(BENCH, "out")
PYTHON = sys.executable

RELAYD_CONFIG = """
[relayd]
state_dir = {state}
log_level = warn

[listener:main]
endpoint = tcp:{port}:interface=127.0.0.1
max_connections_per_address = 0

[limits]
rate_limit = 0
auto_ping_interval = 0

[app:carparty]
listeners = main
path = /carparty
"""


NOTES = """Scenarios this version of the suite measures: fan-out of 100-byte text frames from one sender
to N receivers (carparty protocol), with up to 64 messages in flight per receiver and in lock-step
(one in flight). Server CPU is the server's CPU time over the timed traffic divided by its duration;
generator CPU likewise. Where the generator's share is near 100% it, not the server, set the pace:
the ratios of those rows are bounded by the generator. The suite does not yet measure latency at a
fixed rate, gameroom turns, handshakes, churn or idle connections.
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(command: list[str], core: int) -> list[str]:
    if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1:
        return ["taskset", "-c", str(core), *command]
    return command


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


class Server:
    def __init__(self, name: str):
        self.name = name
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix=f"relayd-bench-{name}-")
        if name == "relayd":
            config = os.path.join(self.directory, "relayd.ini")
            with open(config, "w") as f:
                f.write(RELAYD_CONFIG.format(state=os.path.join(self.directory, "state"), port=self.port))
            twistd = os.path.join(os.path.dirname(PYTHON), "twistd")
            command = [twistd, "--nodaemon", "--pidfile=", "relayd", "--config", config]
            self.path = "/carparty/ws"
        elif name == "ws":
            command = ["node", os.path.join(BENCH, "peers", "ws_relay.js"), str(self.port)]
            self.path = "/"
        elif name == "picows":
            command = [PYTHON, os.path.join(BENCH, "peers", "picows_relay.py"), str(self.port)]
            self.path = "/"
        else:
            raise ValueError(name)
        self.process = subprocess.Popen(pinned(command, 1), cwd=self.directory,
                                        stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.directory, "stderr"), "w"))
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{name} did not start")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.path}"

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def fan_out(server: Server, receivers: int, mode: str, deliveries: int) -> dict:
    config = {"url": server.url, "receivers": receivers, "mode": mode, "deliveries": deliveries}
    generator = subprocess.Popen(pinned(["node", os.path.join(BENCH, "loadgen.js"), json.dumps(config)], 0),
                                 cwd=BENCH, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    server_cpu = 0.0
    for line in generator.stdout:
        if line.strip() == "READY":  # connections are up: time only the traffic
            before = cpu_seconds(server.process.pid)
            generator.stdin.write("go\n")
            generator.stdin.flush()
        elif line.strip() == "DONE":
            server_cpu = cpu_seconds(server.process.pid) - before
            generator.stdin.write("bye\n")
            generator.stdin.flush()
        elif line.startswith("{"):
            result = json.loads(line)
    generator.wait(timeout=60)
    result.update(server=server.name, scenario=f"fan-out {mode} N={receivers}", server_cpu_s=server_cpu,
                  server_rss_kib=rss_kib(server.process.pid))
    if "seconds" in result:
        result["server_cpu_share"] = server_cpu / result["seconds"]
        result["generator_cpu_share"] = result["generator_cpu_s"] / result["seconds"]
    return result


def markdown(results: list[dict], servers: list[str]) -> str:
    peers = [s for s in servers if s != "relayd"]
    by = {(r["scenario"], r["server"]): r for r in results}
    scenarios = list(dict.fromkeys(r["scenario"] for r in results))
    head = ["scenario", *[f"{s} deliveries/s" for s in servers], *[f"relayd / {p}" for p in peers],
            *[f"{s} server CPU" for s in servers], "generator CPU (max)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scenario in scenarios:
        row = [scenario]
        rates = {s: by.get((scenario, s), {}).get("deliveries_per_s") for s in servers}
        row += [f"{rates[s]:,.0f}" if rates[s] else "-" for s in servers]
        for p in peers:
            row.append(f"{rates['relayd'] / rates[p]:.2f}x" if rates.get("relayd") and rates.get(p) else "-")
        row += [f"{by[(scenario, s)]['server_cpu_share']:.0%}" if (scenario, s) in by and "server_cpu_share" in by[(scenario, s)] else "-" for s in servers]
        gen = [by[(scenario, s)].get("generator_cpu_share", 0) for s in servers if (scenario, s) in by]
        row.append(f"{max(gen):.0%}" if gen else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, CPython {platform.python_version()}, "
            f"Node {node}; server pinned to core 1, generator to core 0")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds: small counts, for the test suite")
    parser.add_argument("--servers", default="relayd,ws,picows")
    parser.add_argument("--receivers", default="1,10,100,1000")
    parser.add_argument("--deliveries", type=int, default=300000, help="deliveries per scenario")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    servers = args.servers.split(",")
    receivers = [int(n) for n in args.receivers.split(",")]
    deliveries = args.deliveries
    if args.smoke:
        receivers, deliveries = [1, 10], 2000
    os.makedirs(args.out, exist_ok=True)
    results = []
    for name in servers:
        server = Server(name)
        try:
            for mode in ("many", "lockstep"):
                for n in receivers:
                    # lock-step costs a round trip per message: fewer deliveries keep it in proportion
                    count = deliveries if mode == "many" else max(n * 10, deliveries // 5)
                    result = fan_out(server, n, mode, count)
                    results.append(result)
                    print(json.dumps(result), flush=True)
        finally:
            server.stop()
    with open(os.path.join(args.out, "results.jsonl"), "w") as f:
        for result in results:
            f.write(json.dumps(result) + "\n")
    table = markdown(results, servers)
    failed = [r for r in results if r.get("error") or r.get("lost") or r.get("closed_early")]
    if not args.smoke:
        with open(os.path.join(BENCH, "results.md"), "w") as f:
            f.write(f"# Benchmark results\n\nMachine: {machine()}.\n\nCommand: `bench/run`\n\n{table}\n\n{NOTES}")
    print(table)
    for r in failed:
        print("incomplete:", json.dumps(r))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
