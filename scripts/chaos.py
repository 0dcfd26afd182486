#!/usr/bin/env python3
"""The chaos run: honest headless peers (examples/chaos.rs) in one room over real
WebRTC on this machine, with a signaling server, a hostile peer spraying malformed
and over-budget traffic, peers SIGKILLed and restarted (as new replicas: a killed
peer has no save), and one peer SIGSTOPped past its links' timeout and resumed. At
the end every live honest peer stops acting, the room settles, and each prints the
hash of its synced state: they must all be equal.

    scripts/chaos.py                      # 5 honest peers, 180 s (by hand)
    scripts/chaos.py --bounded            # 3 honest peers, about 70 s (CI)
    scripts/chaos.py --peers 5 --duration 300 --seed 7

Builds the example and the signaling server first (debug profile, the one `cargo
test` builds). Loopback only; nothing leaves this machine. Exits non-zero if the
hashes differ or a peer dies by itself.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get(
    "CARGO_TARGET_DIR", os.path.expanduser("~/.cache/bevy_peer_sync/target")
)


def log(message):
    print(f"chaos [{time.monotonic() - START:6.1f} s] {message}", flush=True)


class Peer:
    def __init__(self, name, args):
        self.name = name
        self.args = args
        self.process = None
        self.stopped = False

    def start(self):
        self.process = subprocess.Popen(
            [os.path.join(TARGET, "debug", "examples", "chaos"), *self.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(os.path.join(OUT, f"{self.name}.log"), "ab"),
            text=True,
            bufsize=1,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn,chaos=info")},
        )

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def send(self, command):
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def hash(self):
        self.send("hash")
        while True:
            line = self.process.stdout.readline()
            if not line:
                return None
            if line.startswith("hash "):
                return line.split()

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", type=int, default=5)
    parser.add_argument("--duration", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=3739)
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--stop-for", type=float, default=20.0)
    parser.add_argument("--bounded", action="store_true")
    parser.add_argument("--no-build", action="store_true")
    options = parser.parse_args()
    if options.bounded:
        options.peers, options.duration, options.stop_for = 3, 40.0, 12.0
    rng = random.Random(options.seed)
    if not options.no_build:
        subprocess.run(
            ["cargo", "build", "--locked", "--example", "chaos", "--bin", "peer-sync-signal"],
            cwd=ROOT,
            check=True,
        )
    room = f"ws://127.0.0.1:{options.port}/chaos"
    signal_server = subprocess.Popen(
        [os.path.join(TARGET, "debug", "peer-sync-signal"), "--port", str(options.port)],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(OUT, "signal.log"), "ab"),
    )
    time.sleep(0.5)
    seeds = iter(range(options.seed * 1000, options.seed * 1000 + 10_000))
    honest = []
    for i in range(options.peers):
        peer = Peer(f"peer{i}", ["--room", room, "--seed", str(next(seeds))])
        peer.start()
        honest.append(peer)
    hostile = Peer("hostile", ["--room", room, "--hostile"])
    hostile.start()
    log(f"{options.peers} honest peers and a hostile one in `{room}`")
    kills = restarts = stops = 0
    deaths = []
    end = time.monotonic() + options.duration
    next_event = time.monotonic() + 8.0
    stopped = None
    try:
        while time.monotonic() < end:
            time.sleep(0.25)
            for peer in honest:
                if not peer.stopped and not peer.alive():
                    deaths.append(peer.name)
                    log(f"{peer.name} died by itself (exit {peer.process.returncode})")
                    peer.start()
            if stopped and time.monotonic() >= stopped[1]:
                os.kill(stopped[0].process.pid, signal.SIGCONT)
                stopped[0].stopped = False
                log(f"{stopped[0].name} resumed")
                stopped = None
            if time.monotonic() < next_event or time.monotonic() > end - 12.0:
                continue
            next_event = time.monotonic() + rng.uniform(6.0, 12.0)
            if stopped is None and (stops == 0 or rng.random() < 0.3):
                peer = rng.choice(honest)
                os.kill(peer.process.pid, signal.SIGSTOP)
                peer.stopped = True
                stopped = (peer, time.monotonic() + options.stop_for)
                stops += 1
                log(f"{peer.name} stopped for {options.stop_for:.0f} s")
            else:
                peer = rng.choice([p for p in honest if not p.stopped])
                peer.kill()
                kills += 1
                log(f"{peer.name} killed")
                time.sleep(rng.uniform(0.5, 3.0))
                peer.args = ["--room", room, "--seed", str(next(seeds))]
                peer.start()
                restarts += 1
                log(f"{peer.name} restarted as a new replica")
        if stopped:
            os.kill(stopped[0].process.pid, signal.SIGCONT)
            stopped[0].stopped = False
            log(f"{stopped[0].name} resumed")
        for peer in honest:
            peer.send("quiet")
        log(f"all quiet; settling for {options.settle:.0f} s")
        time.sleep(options.settle)
        hashes = {}
        for _ in range(6):
            hashes = {peer.name: peer.hash() for peer in honest}
            if len({tuple(h[1:2]) for h in hashes.values() if h}) == 1:
                break
            time.sleep(5.0)
        for name, h in hashes.items():
            log(f"{name}: {' '.join(h[1:]) if h else 'no answer'}")
        ok = (
            all(hashes.values())
            and len({h[1] for h in hashes.values()}) == 1
            and not deaths
        )
        lefts = joins = 0
        for name in os.listdir(OUT):
            if name.startswith("peer"):
                with open(os.path.join(OUT, name), errors="replace") as f:
                    text = f.read()
                lefts += text.count(" left: peer")
                joins += text.count(" joined: peer")
        log(
            f"length {options.duration:.0f} s, kills {kills}, restarts {restarts}, "
            f"stops {stops}, deaths {len(deaths)}, links opened {joins} and closed {lefts} "
            f"as the honest peers saw them, hostile alive {hostile.alive()}: "
            + ("every live honest peer on one hash" if ok else "FAILED")
        )
        return 0 if ok else 1
    finally:
        for peer in [*honest, hostile]:
            if peer.alive():
                if peer.stopped:
                    os.kill(peer.process.pid, signal.SIGCONT)
                peer.process.kill()
        signal_server.kill()


if __name__ == "__main__":
    START = time.monotonic()
    OUT = os.environ.get("CHAOS_OUT", os.path.join(TARGET, "chaos"))
    os.makedirs(OUT, exist_ok=True)
    for stale in os.listdir(OUT):
        if stale.endswith(".log"):
            os.remove(os.path.join(OUT, stale))
    sys.exit(main())
