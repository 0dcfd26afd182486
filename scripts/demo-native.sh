#!/usr/bin/env bash
# The board example as people see it: a signaling server and three player windows
# under Xvfb, each playing the scripted session (`--script`: spawn, drag, type), each
# saving a screenshot and its view of the board. Passes when all three saw the same
# board (shapes, positions, note) and each saw the two others.
#
#   scripts/demo-native.sh [OUT_DIR]      (default: $CARGO_TARGET_DIR/demo-native)
#
# Needs at run time: an X server (Xvfb is started if DISPLAY is unset) and a Vulkan
# driver (mesa's llvmpipe works without a GPU). As root on Debian it installs
# `xvfb mesa-vulkan-drivers libvulkan1` when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bevy_peer_sync/target}"
OUT="${1:-$CARGO_TARGET_DIR/demo-native}"
rm -rf "$OUT" && mkdir -p "$OUT"

if ! command -v Xvfb >/dev/null && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq xvfb mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq xvfb mesa-vulkan-drivers libvulkan1 >/dev/null; }
fi

cargo build --locked --profile demo --features demo --example board

XVFB_PID=
if [ -z "${DISPLAY:-}" ]; then
  export DISPLAY=:97
  Xvfb "$DISPLAY" -screen 0 1280x800x24 >/dev/null 2>&1 &
  XVFB_PID=$!
  trap '[ -n "$XVFB_PID" ] && kill "$XVFB_PID" 2>/dev/null || true' EXIT
  sleep 1
fi

start=$SECONDS
RUST_LOG="${RUST_LOG:-warn,bevy_peer_sync=info}" timeout 240 \
  "$CARGO_TARGET_DIR/demo/examples/board" --players 3 --script --out "$OUT"
echo "scripted native run: $((SECONDS - start)) s"

fail() { echo "demo-native: $*" >&2; exit 1; }
for i in 1 2 3; do
  png="$OUT/board-player$i.png"
  [ -s "$png" ] || fail "no screenshot from player $i"
  [ "$(stat -c %s "$png")" -gt 10000 ] || fail "player $i's screenshot is suspiciously small"
  [ -s "$OUT/board-player$i.txt" ] || fail "no board state from player $i"
  grep -c '^sees' "$OUT/board-player$i.txt" >/dev/null || fail "player $i wrote no peer list"
  others=$(grep '^sees' "$OUT/board-player$i.txt" | grep -o 'player [0-9]' | sort -u | wc -l)
  [ "$others" = 2 ] || fail "player $i sees $others other players, not 2"
done
grep -v '^sees' "$OUT/board-player1.txt" > "$OUT/board-1.state"
for i in 2 3; do
  grep -v '^sees' "$OUT/board-player$i.txt" > "$OUT/board-$i.state"
  diff -u "$OUT/board-1.state" "$OUT/board-$i.state" || fail "player $i saw another board than player 1"
done
[ "$(grep -c '^shape' "$OUT/board-1.state")" = 3 ] || fail "the board does not hold the 3 spawned shapes"
echo "demo-native: 3 players saw the same board; screenshots in $OUT"
cat "$OUT/board-1.state"
