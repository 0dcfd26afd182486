#!/usr/bin/env python3
"""Import circles in src/, at two levels: between modules (files), with
../shared/tools/rust-cycles.py when it is there, and between the top-level parts of
the crate (net, doc, durable, transient, presence, registry, ...), counting every
`crate::` path outside comments, tests included. Exits 1 on a circle."""
import collections, os, re, subprocess, sys

root = sys.argv[1] if len(sys.argv) > 1 else "src"
tool = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "tools", "rust-cycles.py")
if os.path.exists(tool):
    print(subprocess.run([sys.executable, tool, root], capture_output=True, text=True).stdout.strip())
parts = {n[:-3] if n.endswith(".rs") else n for n in os.listdir(root)} - {"lib", "main", "bin", "plugin"}
edges = collections.defaultdict(set)
for folder, _, files in os.walk(root):
    for name in files:
        if not name.endswith(".rs"):
            continue
        path = os.path.join(folder, name)
        part = os.path.relpath(path, root).split(os.sep)[0].removesuffix(".rs")
        if part not in parts:
            continue
        text = "\n".join(l for l in open(path, encoding="utf-8").read().splitlines() if not l.lstrip().startswith("//"))
        for target in re.findall(r"crate::([a-z_]+)", text):
            if target in parts and target != part:
                edges[part].add(target)
circles = set()
def walk(start, node, path):
    for nxt in edges.get(node, ()):
        if nxt == start:
            circles.add(" -> ".join(path + [nxt]))
        elif nxt not in path:
            walk(start, nxt, path + [nxt])
for part in sorted(edges):
    walk(part, part, [part])
for circle in sorted(circles):
    print("circle between parts:", circle)
print(f"{len(circles)} circles among {len(parts)} top-level parts (plugin.rs and lib.rs, which assemble them, left out)")
sys.exit(1 if circles else 0)
