// Two headless Chromium tabs of the board's wasm build, each a scripted player, read
// back through the page. Used by scripts/demo-browser.sh; prints one JSON line per tab.
//
//   node scripts/browser-check.mjs <page url> <signal port> [peers each tab waits for]
import fs from "node:fs";
import { createRequire } from "node:module";

// playwright-core lives in $NODE_DIR (scripts/demo-browser.sh installs it there).
const require = createRequire(`${process.env.NODE_DIR}/`);
const { chromium } = require("playwright-core");

const [url, signalPort, peersArg] = process.argv.slice(2);
const peers = peersArg ?? "2";
const room = `ws://127.0.0.1:${signalPort}/board`;
// The recipe from shared/MACHINE-NOTES.md: no GPU, no QUIC, no lookups of Google
// hosts, real local addresses for WebRTC instead of mDNS names.
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  ignoreDefaultArgs: ["--disable-features"],
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-unsafe-swiftshader",
    // Every player keeps its frame rate, whichever window is in front.
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
    "--disable-features=WebRtcHideLocalIpsWithMdns,Translate,MediaRouter",
  ],
});
const started = Date.now();
const tabs = [];
// One browser context (its own window) per player: a tab behind another one would
// be hidden, and a hidden page gets no animation frames, so its game would stop.
for (const index of [1, 2]) {
  const context = await browser.newContext({ viewport: { width: 800, height: 560 } });
  const page = await context.newPage();
  // WebRTC failures, with the browser's own reason (matchbox logs only the event).
  await page.addInitScript(() => {
    const Native = window.RTCPeerConnection;
    window.RTCPeerConnection = function (...args) {
      const pc = new Native(...args);
      pc.addEventListener("connectionstatechange", () => {
        const at = (performance.now() / 1000).toFixed(1);
        if (pc.connectionState === "failed" || pc.connectionState === "disconnected") {
          console.warn(`peer connection ${pc.connectionState} at ${at} s`);
        } else {
          console.log(`peer connection ${pc.connectionState} at ${at} s`);
        }
      });
      const create = pc.createDataChannel.bind(pc);
      pc.createDataChannel = (label, options) => {
        const channel = create(label, options);
        channel.addEventListener("error", (e) => {
          const err = e.error ?? {};
          console.warn(
            `data channel ${label} error: ${err.message} (${err.errorDetail}, sctp cause ${err.sctpCauseCode})`,
          );
        });
        return channel;
      };
      return pc;
    };
    window.RTCPeerConnection.prototype = Native.prototype;
  });
  const log = [];
  const logFile = `${process.env.OUT ?? "."}/tab${index}.console.txt`;
  fs.writeFileSync(logFile, "");
  page.on("pageerror", (e) => console.error(`tab ${index}: ${e}`));
  page.on("console", (m) => {
    fs.appendFileSync(logFile, `${m.type()}: ${m.text()}\n`);
    log.push(`${m.type()}: ${m.text()}`);
    if (log.length > 60) log.shift();
    if (m.type() === "error" || m.type() === "warning") {
      console.error(`tab ${index} console: ${m.text()}`);
    }
  });
  // TAB_LOG=bevy_peer_sync=debug adds to the tabs' log filter (all lines land in tabN.console.txt).
  const extra = process.env.TAB_LOG ? `&log=${encodeURIComponent(process.env.TAB_LOG)}` : "";
  await page.goto(`${url}?script&peers=${peers}&index=${index}&room=${encodeURIComponent(room)}${extra}`);
  tabs.push({ index, page, log });
}
for (const { index, page } of tabs) {
  console.error(`tab ${index}: ${await page.evaluate(() => document.visibilityState)}`);
}
const timeout = Number(process.env.TAB_TIMEOUT_MS ?? 180_000);
let failed = false;
for (const { index, page, log } of tabs) {
  try {
    await page.waitForFunction(
      () => (document.getElementById("board-state")?.textContent ?? "").includes("entities"),
      null,
      { timeout: Math.max(1_000, timeout - (Date.now() - started)), polling: 500 },
    );
  } catch (error) {
    failed = true;
    console.error(`tab ${index} did not finish its scripted session: ${error.message}`);
    console.error(`tab ${index}: last console lines:\n  ${log.join("\n  ")}`);
    await page.screenshot({ path: `${process.env.OUT ?? "."}/board-tab${index}-failed.png` });
    continue;
  }
  const state = await page.evaluate(() => document.getElementById("board-state").textContent);
  console.log(JSON.stringify({ index, state }));
  await page.screenshot({ path: `${process.env.OUT ?? "."}/board-tab${index}.png` });
}
console.error(`browser tabs done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
await browser.close();
process.exit(failed ? 1 : 0);
