#!/usr/bin/env bash
# The browser half of the demo check: headless Chromium opens two tabs of the board's
# wasm build and one native headless player joins the same room; all three play the
# scripted session and must end on the same board, read back through each page.
#
#   scripts/demo-browser.sh [OUT_DIR]
#
# Needs node and Debian's chromium (installed as root when missing) and
# playwright-core from npm (installed into $HOME/.cache/bevy_peer_sync/node).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bevy_peer_sync/target}"
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
cargo build --locked --bin peer-sync-signal --features demo --example board

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
"$CARGO_TARGET_DIR/debug/peer-sync-signal" --port "$SIGNAL_PORT" & pids+=($!)
python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$BUNDLE" >/dev/null 2>&1 & pids+=($!)
sleep 1

start=$SECONDS
RUST_LOG=warn "$CARGO_TARGET_DIR/debug/examples/board" --headless --script --index 0 --expect-peers 2 \
  --room "ws://127.0.0.1:$SIGNAL_PORT/board" --out "$OUT" & native=$!
pids+=("$native")
OUT="$OUT" NODE_DIR="$NODE_DIR" node scripts/browser-check.mjs \
  "http://127.0.0.1:$HTTP_PORT/" "$SIGNAL_PORT" > "$OUT/tabs.jsonl"
wait "$native"
echo "scripted browser run: $((SECONDS - start)) s"

fail() { echo "demo-browser: $*" >&2; exit 1; }
grep -v '^sees' "$OUT/board-player1.txt" > "$OUT/native.state"
for i in 1 2; do
  node -e '
    const line = require("fs").readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean)[process.argv[2] - 1];
    const { state } = JSON.parse(line);
    process.stdout.write(state.split("\n").filter(l => !l.startsWith("sees")).join("\n"));
  ' "$OUT/tabs.jsonl" "$i" > "$OUT/tab$i.state"
  diff -u "$OUT/native.state" "$OUT/tab$i.state" || fail "tab $i saw another board than the native player"
done
echo "demo-browser: two tabs and a native player converged on one board"
cat "$OUT/native.state"
