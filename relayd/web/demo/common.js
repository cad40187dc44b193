// Shared by the demo pages: connect to the app this page is mounted under and show every message.
"use strict";
const params = new URLSearchParams(location.search);
const demo = (window.demo = { messages: [], opened: false, closeCode: null, closeReason: null, ws: null });
const mount = location.pathname.replace(/\/demo\/?$/, "");

function wsUrl(suffix, query) {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  return scheme + location.host + mount + (suffix || "") + (query ? "?" + query : "");
}

function log(direction, text) {
  const pre = document.getElementById("log");
  pre.textContent += direction + " " + String(text).slice(0, 300) + "\n";
}

function status(text) {
  document.getElementById("status").textContent = text;
}

function connect(url, onMessage) {
  const ws = new WebSocket(url);
  demo.ws = ws;
  demo.opened = false;
  ws.onopen = () => { demo.opened = true; status("connected"); log("*", "open " + url); };
  ws.onmessage = (event) => {
    demo.messages.push(event.data);
    log("<", event.data);
    if (onMessage) onMessage(event.data);
  };
  ws.onclose = (event) => {
    demo.closeCode = event.code;
    demo.closeReason = event.reason;
    status("closed " + event.code);
    log("*", "closed " + event.code + " " + event.reason);
  };
  return ws;
}

function send(value) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  demo.ws.send(text);
  log(">", text);
}
