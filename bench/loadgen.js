// The benchmark's load generator: one game server and N phones of the carparty protocol, against
// relayd or a peer relay. Node and ws, so that it is not the bottleneck; it reports its own CPU time
// so the runner can show it beside the server's.
//   node loadgen.js '{"url": "ws://127.0.0.1:8080/carparty/ws", "receivers": 100, "mode": "many", "deliveries": 1000000}'
// mode "many": up to `window` messages in flight per phone; "lockstep": the next message only once
// every phone has the previous one. Prints one JSON line.
"use strict";
const WebSocket = require("ws");

const cfg = Object.assign({ receivers: 10, mode: "many", deliveries: 200000, size: 100, window: 64 }, JSON.parse(process.argv[2]));
const code = "B" + Math.floor(Math.random() * 1e9);
const payload = JSON.stringify({ t: "x".repeat(Math.max(0, cfg.size - 10)) }).slice(0, cfg.size);
const messages = Math.max(10, Math.floor(cfg.deliveries / cfg.receivers));

function open(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
}

(async () => {
  const server = await open(cfg.url);
  server.send(JSON.stringify({ action: "login_server", server_code: code }));
  await new Promise((r) => setTimeout(r, 200));
  const phones = [];
  let delivered = 0, disorder = 0, closedEarly = 0;
  const counts = new Array(cfg.receivers).fill(0);
  let onDelivery = () => {};
  for (let i = 0; i < cfg.receivers; i++) {
    const phone = await open(cfg.url);
    phone.send(JSON.stringify({ action: "login_client", server_code: code, client_id: String(i) }));
    phone.on("message", (data) => {
      if (data.length !== payload.length) disorder++;
      counts[i]++;
      delivered++;
      onDelivery();
    });
    phone.on("close", () => { if (counts[i] < messages) closedEarly++; });
    phones.push(phone);
  }
  await new Promise((r) => setTimeout(r, 300 + cfg.receivers));
  // the runner samples the server's CPU time between READY/go and the result line
  process.stdout.write("READY\n");
  await new Promise((r) => process.stdin.once("data", r));
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const total = messages * cfg.receivers;
  let sent = 0;
  await new Promise((resolve) => {
    const timeout = setTimeout(resolve, (cfg.timeout || 120) * 1000);
    const done = () => { clearTimeout(timeout); resolve(); };
    if (cfg.mode === "lockstep") {
      onDelivery = () => {
        if (delivered === total) return done();
        if (delivered === sent * cfg.receivers) { sent++; server.send(payload); }
      };
      sent = 1;
      server.send(payload);
    } else {
      const pump = () => {
        while (sent < messages && sent * cfg.receivers - delivered < cfg.window * cfg.receivers) {
          server.send(payload);
          sent++;
        }
      };
      onDelivery = () => {
        if (delivered === total) return done();
        if (delivered % cfg.receivers === 0) pump();
      };
      pump();
    }
  });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  process.stdout.write("DONE\n");
  await new Promise((r) => process.stdin.once("data", r));
  console.log(JSON.stringify({
    receivers: cfg.receivers, mode: cfg.mode, messages, sent, expected: total, delivered, seconds,
    deliveries_per_s: delivered / seconds, generator_cpu_s: (cpu.user + cpu.system) / 1e6,
    lost: total - delivered, malformed: disorder, closed_early: closedEarly,
  }));
  for (const p of phones) p.terminate();
  server.terminate();
  process.exit(0);
})().catch((e) => { console.log(JSON.stringify({ error: String(e) })); process.exit(1); });
