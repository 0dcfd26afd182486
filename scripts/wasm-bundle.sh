#!/usr/bin/env bash
# Builds an example for the browser (wasm32 + wasm-bindgen, WebGL2) and, unless told
# not to, serves it on localhost with a signaling server, so browser tabs and native
# players share one room.
#
#   scripts/wasm-bundle.sh                 # board, served at http://127.0.0.1:8080
#   scripts/wasm-bundle.sh --example arena --http-port 8081 --signal-port 3537
#   scripts/wasm-bundle.sh --no-serve      # only build; prints the bundle directory
#
# Toolchain: the normal rustup wasm32 target when it is installed or can be added (a
# user's machine); otherwise Debian's rustc-web with -Zbuild-std, through
# ../shared/tools/wasm-env.sh. wasm-bindgen-cli is installed at the version in
# Cargo.lock when missing. Serving needs python3 (its http.server).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bevy_peer_sync/target}"

EXAMPLE=board
SERVE=1
HTTP_PORT=8080
SIGNAL_PORT=3536
while [ $# -gt 0 ]; do
  case "$1" in
    --example) EXAMPLE="$2"; shift 2 ;;
    --no-serve) SERVE=0; shift ;;
    --http-port) HTTP_PORT="$2"; shift 2 ;;
    --signal-port) SIGNAL_PORT="$2"; shift 2 ;;
    *) echo "wasm-bundle: unknown option $1" >&2; exit 2 ;;
  esac
done
OUT="${WASM_OUT:-$CARGO_TARGET_DIR/wasm-bundle/$EXAMPLE}"

build_flags=(--release --features demo --example "$EXAMPLE" --target wasm32-unknown-unknown)
if rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$' \
  || rustup target add wasm32-unknown-unknown >/dev/null 2>&1; then
  echo "wasm-bundle: rustup's wasm32 target"
  RUSTFLAGS='--cfg getrandom_backend="wasm_js" --cfg=web_sys_unstable_apis' \
    cargo build --locked "${build_flags[@]}"
  WASM_DIR="$CARGO_TARGET_DIR"
else
  echo "wasm-bundle: no rustup wasm32 target here; Debian rustc-web with -Zbuild-std"
  WASM_DIR="$HOME/.cache/bevy_peer_sync/wasm"
  (
    # shellcheck disable=SC1091
    source ../shared/tools/wasm-env.sh
    export CARGO_TARGET_DIR="$WASM_DIR"
    cargo build --locked "${build_flags[@]}" $WASM_BUILD_STD
  )
fi
WASM="$WASM_DIR/wasm32-unknown-unknown/release/examples/$EXAMPLE.wasm"

version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
if ! wasm-bindgen --version 2>/dev/null | grep -q " $version\$"; then
  echo "wasm-bundle: installing wasm-bindgen-cli $version (it must match Cargo.lock)"
  CARGO_TARGET_DIR="$HOME/.cache/wasm-bindgen-cli" cargo install -q wasm-bindgen-cli --version "$version"
fi
rm -rf "$OUT" && mkdir -p "$OUT"
wasm-bindgen --target web --no-typescript --remove-name-section --out-dir "$OUT" --out-name "$EXAMPLE" "$WASM"

cat > "$OUT/index.html" <<HTML
<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>bevy_peer_sync · $EXAMPLE</title>
  <link rel="icon" href="data:,">
  <style>
    html, body { margin: 0; height: 100%; background: #1f2128; }
    canvas { display: block; width: 100%; height: 100%; outline: none; }
    #$EXAMPLE-state { display: none; white-space: pre; }
  </style>
</head>
<body>
  <canvas id="$EXAMPLE"></canvas>
  <pre id="$EXAMPLE-state"></pre>
  <script type="module">
    // The room defaults to this host's signaling server on port $SIGNAL_PORT; pass
    // ?room=ws://host:port/room to join another, ?index=N for a player colour.
    import init from "./$EXAMPLE.js";
    init();
  </script>
</body>
</html>
HTML
size=$(stat -c %s "$OUT/${EXAMPLE}_bg.wasm")
echo "wasm-bundle: $OUT (${EXAMPLE}_bg.wasm: $((size / 1024)) KiB)"

[ "$SERVE" = 1 ] || exit 0
cargo build --locked --bin peer-sync-signal
"$CARGO_TARGET_DIR/debug/peer-sync-signal" --port "$SIGNAL_PORT" &
SIGNAL_PID=$!
trap 'kill $SIGNAL_PID 2>/dev/null || true' EXIT
echo "wasm-bundle: open http://127.0.0.1:$HTTP_PORT/ (room ws://127.0.0.1:$SIGNAL_PORT/$EXAMPLE);"
echo "  native players join with: cargo run --features demo --example $EXAMPLE -- --room ws://127.0.0.1:$SIGNAL_PORT/$EXAMPLE"
python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$OUT"
