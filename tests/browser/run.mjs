// Drives headless Chromium (Debian's chromium, through playwright-core) against a running relayd.
//   node run.mjs CASE '{"http": "...", "https": "...", "spki": "...", "token": "...", "artifacts": "..."}'
// Prints one JSON object with what the pages saw; tests/browser/test_browser.py judges it.
import { chromium } from "playwright-core";
import { join } from "node:path";

const [, , name, rawConfig] = process.argv;
const config = JSON.parse(rawConfig);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

// playwright gives every launch a fresh, empty profile of its own
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    `--ignore-certificate-errors-spki-list=${config.spki}`,
    "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
  ],
});
const context = await browser.newContext();
const result = {};
const pages = [];

async function open(url) {
  const page = await context.newPage();
  page.on("console", (m) => (result.console ??= []).push(m.text()));
  for (let attempt = 0; ; attempt++) {
    try {
      await page.goto(url);
      break;
    } catch (error) {
      // a network change under a fresh browser aborts navigation; anything else is a failure
      if (attempt >= 2 || !String(error).includes("ERR_NETWORK_CHANGED")) throw error;
    }
  }
  pages.push(page);
  return page;
}

async function until(page, predicate, arg, timeout = 15000) {
  await page.waitForFunction(predicate, arg, { timeout, polling: 50 });
}

async function createRoom(players) {
  const response = await fetch(`${config.http}/gameroom/create`, {
    method: "POST", headers: { authorization: `Bearer ${config.token}` },
    body: JSON.stringify({ engine: "snakes@1", seed: 7, players }),
  });
  return response.json();
}

async function shot(page, label) {
  await page.screenshot({ path: join(config.artifacts, `${name}-${label}.png`), fullPage: true });
}

const cases = {
  async wss() {
    const page = await open(`${config.https}/echo/demo`);
    await until(page, () => demo.opened);
    const big = "w".repeat(70000);
    await page.evaluate((text) => send(text), big);
    await until(page, (n) => demo.messages.length > 0 && demo.messages[0].length === n, big.length);
    result.echoed = (await page.evaluate(() => demo.messages[0])) === big;
    await page.evaluate(() => demo.ws.close(1000));
    await until(page, () => demo.closeCode !== null);
    result.closeCode = await page.evaluate(() => demo.closeCode);
    await shot(page, "echo");
    const foreign = await open(config.https.replace("localhost", "127.0.0.1") + "/echo/demo");
    await until(foreign, () => demo.closeCode !== null);
    result.foreign = await foreign.evaluate(() => ({ opened: demo.opened, closeCode: demo.closeCode }));
  },

  async wikispeedruns() {
    const base = `${config.http}/wikispeedruns/demo`;
    const host = await open(`${base}?mode=lobby&user=host&lobby=10&prompt=5`);
    await until(host, () => demo.users.length === 1);
    const guest = await open(`${base}?mode=lobby&user=guest&lobby=10&prompt=5`);
    await until(host, () => demo.users.length === 2);
    await until(guest, () => demo.users.length === 2);
    result.users = await guest.evaluate(() => demo.users);
    await host.evaluate(() => demo.start());
    await until(host, () => demo.started);
    await until(guest, () => demo.started);
    result.started = [await host.evaluate(() => demo.started), await guest.evaluate(() => demo.started)];
    const board = await open(`${base}?mode=leaderboard&lobby=10&prompt=5`);
    await until(board, () => demo.opened);
    await board.waitForTimeout(200); // the subscription frame is on its way
    const trigger = await open(`${base}?mode=trigger&lobby=10&prompt=5`);
    await until(trigger, () => demo.closeCode !== null);
    await until(board, () => demo.refreshes === 1);
    result.refreshes = await board.evaluate(() => demo.refreshes);
    await shot(host, "host");
    await shot(board, "leaderboard");
  },

  async groovejet() {
    const base = `${config.http}/groovejet/demo`;
    const host = await open(`${base}?role=host`);
    await until(host, () => demo.roomCode !== null);
    const code = await host.evaluate(() => demo.roomCode);
    const hostId = await host.evaluate(() => demo.clientId);
    const guest = await open(`${base}?role=guest&code=${code}`);
    await until(host, () => demo.channelOpen && demo.received.length > 0, undefined, 20000);
    await until(guest, () => demo.channelOpen && demo.received.length > 0, undefined, 20000);
    result.hostReceived = await host.evaluate(() => demo.received);
    result.guestReceived = await guest.evaluate(() => demo.received);
    await shot(guest, "guest");
    await host.reload();
    await until(host, () => demo.resumed !== null);
    result.resumed = await host.evaluate(() => demo.resumed);
    result.sameClientId = (await host.evaluate(() => demo.clientId)) === hostId;
    await shot(host, "host-resumed");
  },

  async carparty() {
    const base = `${config.http}/carparty/demo`;
    const server = await open(`${base}?role=server&code=test`);
    await until(server, () => demo.opened);
    await server.waitForTimeout(100);
    const phones = [];
    for (const id of ["1", "2", "3"]) {
      phones.push(await open(`${base}?role=phone&code=TEST&id=${id}`));
    }
    await until(server, () => demo.frames.filter((f) => f.action === "connect").length === 3);
    await server.evaluate(() => { demo.send({ b: 1 }); demo.send({ receiver_id: "2", t: 1 }); demo.send({ b: 2 }); });
    await phones[0].evaluate(() => demo.send({ steer: 1, client_id: "spoofed" }));
    for (const phone of phones) await until(phone, () => demo.frames.length >= 2);
    await until(phones[1], () => demo.frames.length === 3);
    await until(server, () => demo.frames.some((f) => f.steer === 1));
    result.phones = [];
    for (const phone of phones) result.phones.push(await phone.evaluate(() => demo.frames));
    result.server = await server.evaluate(() => demo.frames);
    await shot(server, "server");
    await shot(phones[1], "phone2");
  },

  async gameroom() {
    // four players (bots that steer now and then) and a spectator play 600 turns (30 s or more); one player reloads its
    // page mid-game, rejoins with its session token and catches up; every page ends with one hash
    const room = await createRoom(4);
    const players = [];
    for (const name of ["ann", "bob", "cy", "dee"]) {
      players.push(await open(`${config.http}/gameroom/demo?room=${room.id}&name=${name}&bot=1`));
      await until(players.at(-1), () => window.demo && demo.welcome !== null);
    }
    const spectator = await open(`${config.http}/gameroom/demo?room=${room.id}&watch=1`);
    await until(players[1], () => demo.executed >= 100, undefined, 30000);
    await players[1].reload();
    await until(players[1], () => window.demo && demo.welcome !== null);
    result.reloadedAs = await players[1].evaluate(() => demo.welcome.player_id);
    const target = 600;  // at least 30 s: a turn lasts min_turn_ms (50 ms) or more
    for (const page of [...players, spectator]) await until(page, (t) => demo.executed >= t, target, 100000);
    result.hashes = [];
    for (const page of [...players, spectator]) result.hashes.push(await page.evaluate((t) => demo.hashes[t], target));
    result.halted = await players[0].evaluate(() => demo.halted);
    await shot(players[0], "snakes");
  },

  async gameroom_lag() {
    // a page whose uplink stalls is shown as lagging by the others, then substituted
    const room = await createRoom(2);
    const fast = await open(`${config.http}/gameroom/demo?room=${room.id}&name=fast&bot=1`);
    await until(fast, () => window.demo && demo.welcome !== null);
    const slow = await open(`${config.http}/gameroom/demo?room=${room.id}&name=slow&stall_at=20&stall_ms=4000`);
    await until(fast, () => demo.substituted.length > 0, undefined, 30000);
    result.lagging = await fast.evaluate(() => demo.lagging);
    result.substituted = await fast.evaluate(() => demo.substituted);
    result.slow = await slow.evaluate(() => demo.client.playerId);
    result.waitingShown = await fast.evaluate(() => document.getElementById("waiting").textContent);
    await shot(fast, "lagging");
  },

  async gameroom_tamper() {
    // a page that changes its own state halts the room with itself named
    const room = await createRoom(2);
    const honest = await open(`${config.http}/gameroom/demo?room=${room.id}&name=honest&bot=1`);
    await until(honest, () => window.demo && demo.welcome !== null);
    const cheat = await open(`${config.http}/gameroom/demo?room=${room.id}&name=cheat&tamper_at=20`);
    for (const page of [honest, cheat]) await until(page, () => demo.halted !== null, undefined, 30000);
    result.cheat = await cheat.evaluate(() => demo.client.playerId);
    result.halted = [];
    for (const page of [honest, cheat]) result.halted.push(await page.evaluate(() => demo.halted));
    await shot(honest, "halted");
  },
};

try {
  await cases[name]();
  result.ok = true;
} catch (error) {
  result.ok = false;
  result.error = String(error && error.stack || error);
  result.pageLogs = [];
  for (const page of pages) {
    try { result.pageLogs.push(await page.evaluate(() => document.getElementById("log").textContent.slice(-3000))); } catch (e) { /* closed */ }
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
