#!/usr/bin/env python3
"""Checks the library's module graph: every top-level module of src/ sits in one layer of LAYERS,
and a module uses (`crate::x`, outside comments and its unit tests) only modules of lower layers,
so the graph has no cycle and no arrow upwards. `--print` prints the graph.

Usage: scripts/module_layers.py [--print] [SRC_DIR]"""
import os
import re
import sys

# Lowest first. A module may use the modules listed before it, never those after it.
LAYERS = [
    "redacted", "time", "size", "warning", "lock_file", "private_dir", "chunks", "ndjson", "error", "r4", "fhirpath",
    "http", "smart", "bulk", "snapshot", "view", "catalog", "cluster", "flight", "demo", "config",
]
TEST_MODULE = re.compile(r"^#\[cfg\(test\)\]\s*\nmod tests\b", re.M)
PATH = re.compile(r"crate::([A-Za-z_0-9]+)|crate::\{([^}]*)")


def uses(src):
    """Yields (module, used module) for every `crate::` path of the library's files."""
    for dirpath, _, files in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        if rel_dir.split(os.sep)[0] == "bin":
            continue
        for name in files:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if not name.endswith(".rs") or rel in ("lib.rs", "main.rs") or name == "tests.rs":
                continue
            module = rel.split(os.sep)[0].removesuffix(".rs")
            with open(os.path.join(dirpath, name)) as f:
                text = TEST_MODULE.split(f.read())[0]
            for line in text.splitlines():
                if line.lstrip().startswith("//"):
                    continue
                for single, group in PATH.findall(line):
                    for used in [single] if single else group.split(","):
                        used = used.strip().split("::")[0]
                        used = "error" if used in ("Error", "Result") else used
                        if used and used != module:
                            yield module, used


def main():
    args = [a for a in sys.argv[1:] if a != "--print"]
    src = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "src")
    graph = {}
    for module, used in uses(src):
        graph.setdefault(module, set()).add(used)
    if "--print" in sys.argv:
        for module in sorted(graph, key=lambda m: LAYERS.index(m) if m in LAYERS else -1):
            print(f"{module:10} -> {', '.join(sorted(graph[module]))}")
    wrong = []
    for module, used_all in sorted(graph.items()):
        for used in sorted(used_all):
            unknown = [m for m in (module, used) if m not in LAYERS]
            if unknown:
                wrong.append(f"{module} -> {used}: add {', '.join(unknown)} to LAYERS")
            elif LAYERS.index(used) > LAYERS.index(module):
                wrong.append(f"{module} -> {used}: {used} is in a higher layer")
    for line in wrong:
        print(f"module_layers: {line}", file=sys.stderr)
    sys.exit(1 if wrong else 0)


main()
