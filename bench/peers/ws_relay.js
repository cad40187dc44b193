// The Node `ws` peer: a minimal carparty relay (login_server / login_client, server frames to every
// phone, phone frames to the server with client_id stamped), the same protocol the benchmark's
// generator speaks to relayd, plus the parts of wikispeedruns (lobby_prompts, `refresh` to everyone
// following a lobby) and clicker (REGISTER, SCORE -> SCORED and SCORE lines to LISTENers) that the
// generator's other fan-out scenarios use. No limits beyond ws's defaults: it is what a user would write.
"use strict";
const { WebSocketServer } = require("ws");

const port = Number(process.argv[2] || 9100);
const keepalive = Number(process.argv[3] || 10) * 1000;
const servers = new Map(); // code -> { ws, clients: Set }
const lobbies = new Map(); // lobby id -> Set of ws
const listeners = new Map(); // device id -> Set of ws
let nextDevice = 100000;

function follow(map, key, ws) {
  if (!map.has(key)) map.set(key, new Set());
  map.get(key).add(ws);
  ws.once("close", () => { const set = map.get(key); set.delete(ws); if (!set.size) map.delete(key); });
}

function clicker(ws, text) {
  const [verb, ...args] = text.split(" ");
  if (verb === "REGISTER") {
    const id = String(nextDevice++);
    ws.send(`REGISTERED ${id} 00000000-0000-4000-8000-000000000000`);
    return { device: id };
  }
  if (verb === "LISTEN") {
    for (const id of args) follow(listeners, id, ws);
    ws.send("CONNECT " + args.join(" "));
    return {};
  }
  ws.terminate();
  return null;
}
const wss = new WebSocketServer({ host: "127.0.0.1", port, perMessageDeflate: false, backlog: 1024 });

wss.on("connection", (ws) => {
  let role = null, session = null, clientId = null, device = null, lobby = null;
  ws.on("message", (data, isBinary) => {
    if (role === "device") {
      const [, ts, score] = data.toString().split(" ");
      ws.send(`SCORED ${ts}`);
      const line = `SCORE ${ts} ${device} ${score}`;
      for (const listener of listeners.get(device) || []) listener.send(line);
      return;
    }
    if (role === "lobby") {
      const message = JSON.parse(data);
      if (message.type === "lobby_prompts_update") for (const follower of lobbies.get(lobby) || []) follower.send("refresh");
      return;
    }
    if (role === null && !isBinary && data[0] !== 0x7b) {
      const state = clicker(ws, data.toString());
      if (state && state.device) { role = "device"; device = state.device; }
      else if (state) role = "listener";
      return;
    }
    if (role === null) {
      let login;
      try { login = JSON.parse(data); } catch { ws.terminate(); return; }
      if (login.type === "lobby_prompts") {
        role = "lobby";
        lobby = String(login.lobby_id);
        follow(lobbies, lobby, ws);
        return;
      }
      if (login.action === "login_server" && !servers.has(login.server_code)) {
        role = "server";
        session = { ws, clients: new Set() };
        servers.set(login.server_code, session);
        ws.once("close", () => { servers.delete(login.server_code); for (const c of session.clients) c.close(); });
      } else if (login.action === "login_client" && servers.has(login.server_code) && typeof login.client_id === "string") {
        role = "client";
        clientId = login.client_id;
        session = servers.get(login.server_code);
        session.clients.add(ws);
        ws.once("close", () => session.clients.delete(ws));
      } else {
        ws.terminate();
      }
      return;
    }
    if (role === "server") {
      for (const client of session.clients) client.send(data, { binary: isBinary });
    } else {
      let message;
      try { message = JSON.parse(data); } catch { ws.terminate(); return; }
      message.client_id = clientId;
      session.ws.send(JSON.stringify(message));
    }
  });
});
// keepalive as the ws README shows it, at the interval relayd and the picows peer have (argv[3] seconds)
const alive = new WeakSet();
wss.on("connection", (ws) => { alive.add(ws); ws.on("pong", () => alive.add(ws)); });
setInterval(() => {
  for (const ws of wss.clients) {
    if (!alive.has(ws)) { ws.terminate(); continue; }
    alive.delete(ws);
    ws.ping();
  }
}, keepalive);
wss.on("listening", () => console.log("listening", port));
