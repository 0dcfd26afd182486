#!/usr/bin/env bash
# The browser half of the demo check: headless Chromium opens two tabs of the board's
# wasm build and a native player joins them (`--headless`, no window); all three play
# the scripted session and must end on the same board, read back through each page
# and the native player's state file. A fourth, hostile, native peer (`--hostile`)
# sprays every player with the crate's hostile inputs (`testing::hostile`) meanwhile:
# each tab must count them refused, keep running (a panic aborts a wasm tab) and still
# converge.
#
#   scripts/demo-browser.sh [OUT_DIR]             # two tabs and a native player (CI)
#   scripts/demo-browser.sh --tabs-only [OUT_DIR] # the two tabs alone
#
# TAB_LOG=bevy_peer_sync=debug adds to the tabs' log filter and RUST_LOG sets the
# native player's; every tab's console is saved as OUT_DIR/tabN.console.txt.
#
# Needs node and Debian's chromium (installed as root when missing) and
# playwright-core from npm (installed into $HOME/.cache/bevy_peer_sync/node).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bevy_peer_sync/target}"
WITH_NATIVE=1
if [ "${1:-}" = "--tabs-only" ]; then WITH_NATIVE=0; shift; fi
OUT="${1:-$CARGO_TARGET_DIR/demo-browser}"
rm -rf "$OUT" && mkdir -p "$OUT"
HTTP_PORT=8737
SIGNAL_PORT=3737

if ! [ -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; }
fi
NODE_DIR="$HOME/.cache/bevy_peer_sync/node"
if ! [ -d "$NODE_DIR/node_modules/playwright-core" ]; then
  mkdir -p "$NODE_DIR"
  npm install --silent --prefix "$NODE_DIR" playwright-core >/dev/null
fi

scripts/wasm-bundle.sh --no-serve --signal-port "$SIGNAL_PORT"
BUNDLE="$CARGO_TARGET_DIR/wasm-bundle/board"
cargo build --locked --profile demo --bin peer-sync-signal --features demo --example board

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
"$CARGO_TARGET_DIR/demo/peer-sync-signal" --port "$SIGNAL_PORT" & pids+=($!)
python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$BUNDLE" >/dev/null 2>&1 & pids+=($!)
sleep 1

start=$SECONDS
if [ "$WITH_NATIVE" = 1 ]; then
  RUST_LOG="${RUST_LOG:-warn}" "$CARGO_TARGET_DIR/demo/examples/board" --headless --script --index 0 --expect-peers 2 \
    --room "ws://127.0.0.1:$SIGNAL_PORT/board" --out "$OUT" & native=$!
  pids+=("$native")
  RUST_LOG="${RUST_LOG:-warn},board=info" "$CARGO_TARGET_DIR/demo/examples/board" --headless --hostile --index 5 \
    --room "ws://127.0.0.1:$SIGNAL_PORT/board" --out "$OUT" > "$OUT/hostile.log" 2>&1 & pids+=($!)
fi
OUT="$OUT" NODE_DIR="$NODE_DIR" node scripts/browser-check.mjs \
  "http://127.0.0.1:$HTTP_PORT/" "$SIGNAL_PORT" "$((1 + WITH_NATIVE))" > "$OUT/tabs.jsonl"
if [ "$WITH_NATIVE" = 1 ]; then wait "$native"; fi
echo "scripted browser run: $((SECONDS - start)) s"

fail() { echo "demo-browser: $*" >&2; exit 1; }
tab_state() {
  node -e '
    const line = require("fs").readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean)[process.argv[2] - 1];
    const { state } = JSON.parse(line);
    process.stdout.write(state.split("\n").filter(l => !l.startsWith("sees")).join("\n"));
  ' "$OUT/tabs.jsonl" "$1"
}
if grep -l -e "panicked" -e "RuntimeError" "$OUT"/tab*.console.txt; then
  fail "a tab panicked (see its console above)"
fi
tab_state 1 > "$OUT/tab1.state"
tab_state 2 > "$OUT/tab2.state"
grep -q "^entities $((2 + WITH_NATIVE))\$" "$OUT/tab1.state" || fail "tab 1 did not see every player's shape"
diff -u "$OUT/tab1.state" "$OUT/tab2.state" || fail "the two tabs saw different boards"
if [ "$WITH_NATIVE" = 1 ]; then
  grep -v '^sees' "$OUT/board-player1.txt" > "$OUT/native.state"
  diff -u "$OUT/native.state" "$OUT/tab1.state" || fail "the native player saw another board"
  for tab in 1 2; do
    refused=$(node -e '
      const line = require("fs").readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean)[process.argv[2] - 1];
      const m = JSON.parse(line).state.match(/refused (\d+)/);
      process.stdout.write(m ? m[1] : "0");
    ' "$OUT/tabs.jsonl" "$tab")
    echo "demo-browser: tab $tab refused $refused datagrams of the hostile peer's spray"
    [ "$refused" -ge 250 ] || fail "tab $tab refused $refused datagrams: the spray did not reach it"
  done
  echo "demo-browser: two tabs and a native player converged on one board, a hostile peer spraying them"
else
  echo "demo-browser: two tabs converged on one board"
fi
cat "$OUT/tab1.state"
