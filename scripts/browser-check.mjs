// Two headless Chromium tabs of the board's wasm build, each a scripted player, read
// back through the page. Used by scripts/demo-browser.sh; prints one JSON line per tab.
//
//   node scripts/browser-check.mjs <page url> <signal port>
import { createRequire } from "node:module";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

// playwright-core lives in $NODE_DIR (scripts/demo-browser.sh installs it there).
const require = createRequire(`${process.env.NODE_DIR}/`);
const { chromium } = require("playwright-core");

const [url, signalPort] = process.argv.slice(2);
const room = `ws://127.0.0.1:${signalPort}/board`;
// The recipe from shared/MACHINE-NOTES.md: no GPU, no QUIC, no lookups of Google
// hosts, real local addresses for WebRTC instead of mDNS names.
const context = await chromium.launchPersistentContext(
  mkdtempSync(join(tmpdir(), "peer-sync-chromium-")),
  {
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
      "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
      "--disable-features=WebRtcHideLocalIpsWithMdns,Translate,MediaRouter",
    ],
    viewport: { width: 800, height: 560 },
  },
);
const started = Date.now();
const tabs = [];
for (const index of [1, 2]) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`tab ${index}: ${e}`));
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") console.error(`tab ${index} console: ${m.text()}`);
  });
  await page.goto(`${url}?script&peers=2&index=${index}&room=${encodeURIComponent(room)}`);
  tabs.push({ index, page });
}
for (const { index, page } of tabs) {
  await page.waitForFunction(
    () => (document.getElementById("board-state")?.textContent ?? "").includes("entities"),
    null,
    { timeout: Number(process.env.TAB_TIMEOUT_MS ?? 180_000), polling: 500 },
  );
  const state = await page.evaluate(() => document.getElementById("board-state").textContent);
  console.log(JSON.stringify({ index, state }));
  await page.screenshot({ path: `${process.env.OUT ?? "."}/board-tab${index}.png` });
}
console.error(`browser tabs done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
await context.close();
