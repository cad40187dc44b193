// The Node `ws` peer: a minimal carparty relay (login_server / login_client, server frames to every
// phone, phone frames to the server with client_id stamped), the same protocol the benchmark's
// generator speaks to relayd. No limits beyond ws's defaults: it is what a user would write.
"use strict";
const { WebSocketServer } = require("ws");

const port = Number(process.argv[2] || 9100);
const servers = new Map(); // code -> { ws, clients: Set }
const wss = new WebSocketServer({ host: "127.0.0.1", port, perMessageDeflate: false, backlog: 1024 });

wss.on("connection", (ws) => {
  let role = null, session = null, clientId = null;
  ws.on("message", (data, isBinary) => {
    if (role === null) {
      let login;
      try { login = JSON.parse(data); } catch { ws.terminate(); return; }
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
// keepalive as the ws README shows it, every 10 s as relayd and the picows peer have it
const alive = new WeakSet();
wss.on("connection", (ws) => { alive.add(ws); ws.on("pong", () => alive.add(ws)); });
setInterval(() => {
  for (const ws of wss.clients) {
    if (!alive.has(ws)) { ws.terminate(); continue; }
    alive.delete(ws);
    ws.ping();
  }
}, 10000);
wss.on("listening", () => console.log("listening", port));
