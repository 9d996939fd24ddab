#!/usr/bin/env python3
"""The shape of server/src, as issue "cut the server by capability" judges it:
trait sizes, non-test functions over 80 lines, and import cycles between
files and between top-level folders. Reads the sources as text (no build).

    python3 scripts/house.py            # from the repository root

Test code does not count: #[cfg(test)] tails, tests.rs and *_tests.rs,
testing/, the conformance suites and the test doubles behind the `testing`
feature (store/memory.rs, store/faults.rs, index/counting.rs). An import is
a `crate::` or `super::` path outside comments.
"""
import os
import re
import sys

ROOT = "server/src"
TEST_DOUBLES = ("store/memory.rs", "store/faults.rs", "index/counting.rs")


def sources():
    for d, _, fs in os.walk(ROOT):
        for f in fs:
            if f.endswith(".rs"):
                yield os.path.join(d, f)


def is_test_file(p):
    name = os.path.basename(p)
    return (name == "tests.rs" or name.endswith("_tests.rs") or "/testing/" in p
            or "conformance" in p or p.endswith(TEST_DOUBLES))


def block_end(lines, i):
    """Index of the line closing the item that starts at line i, or None."""
    depth, started = 0, False
    for j in range(i, len(lines)):
        s = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j])
        s = re.sub(r"//.*", "", s)
        s = re.sub(r"'(\\.|[^'\\])'", "''", s)
        for c in s:
            if c == "{":
                depth, started = depth + 1, True
            elif c == "}":
                depth -= 1
        if started and depth <= 0:
            return j
        if not started and s.rstrip().endswith(";"):
            return None
    return None


def shape():
    traits, long_fns = [], []
    for p in sources():
        lines = open(p).read().split("\n")
        tests_from = next((i for i, l in enumerate(lines) if re.match(r"\s*#\[cfg\(test\)\]", l)), None)
        for i, l in enumerate(lines):
            m = re.match(r"\s*(pub(\([^)]*\))?\s+)?trait\s+(\w+)", l)
            if m:
                e = block_end(lines, i)
                if e:
                    n = sum(1 for k in range(i + 1, e) if re.match(r"\s*(async\s+)?fn\s", lines[k]))
                    traits.append((n, m.group(3), p))
            m = re.match(r"\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)", l)
            if m and not is_test_file(p) and (tests_from is None or i < tests_from):
                e = block_end(lines, i)
                if e and e - i + 1 > 80:
                    long_fns.append((e - i + 1, m.group(6), p))
    return traits, long_fns


def modules():
    mods = {}
    for p in sources():
        parts = os.path.relpath(p, ROOT)[:-3].split("/")
        if parts[-1] in ("mod", "lib", "main"):
            parts = parts[:-1]
        mods["::".join(parts)] = p
    return mods


def edges(mods):
    out = {}
    for m, p in mods.items():
        if is_test_file(p):
            continue
        src = open(p).read()
        i = src.find("#[cfg(test)]")
        src = re.sub(r"//.*", "", src if i < 0 else src[:i])
        deps = set()
        base = m.split("::")[:-1]
        paths = [u.split("::") for u in re.findall(r"crate::([a-z_]+(?:::[a-z_]+)*)", src)]
        paths += [base + u.split("::") for u in re.findall(r"\bsuper::([a-z_]+(?:::[a-z_]+)*)", src)]
        for segs in paths:
            for k in range(len(segs), 0, -1):
                c = "::".join(segs[:k])
                if c in mods:
                    deps.add(c)
                    break
        deps.discard(m)
        out[m] = deps
    return out


def cycles(graph):
    """Strongly connected components with more than one member (Tarjan)."""
    sys.setrecursionlimit(10000)
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def main():
    traits, long_fns = shape()
    print("traits (methods):")
    for n, name, p in sorted(traits, reverse=True):
        if n >= 3:
            print(f"  {n:3} {name} ({p})")
    print(f"non-test functions over 80 lines: {len(long_fns)}")
    for n, name, p in sorted(long_fns, reverse=True):
        print(f"  {n:3} {name} ({p})")
    files = edges(modules())
    folders = {}
    for a, ds in files.items():
        for d in ds:
            if a.split("::")[0] != d.split("::")[0]:
                folders.setdefault(a.split("::")[0], set()).add(d.split("::")[0])
    for what, graph in (("files", files), ("folders", folders)):
        found = cycles(graph)
        print(f"import cycles between {what}: {len(found)}")
        for c in found:
            print("  " + " <-> ".join(c))


if __name__ == "__main__":
    main()
