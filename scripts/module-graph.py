#!/usr/bin/env python3
"""Prints the module import graph of a Rust crate and fails when it has a cycle.

    scripts/module-graph.py CRATE_SRC_DIR [--quiet]

A module is a file (`a.rs`, `a/mod.rs`); inline modules belong to their file, and test modules
(`#[cfg(test)]`) are left out. An edge A -> B means a path in A (a `use`, or a path written in
code: `crate::b::x`, `super::x`, `child::x`) names something in module B. Declaring a child
(`mod b;`) is not an edge: a folder's `mod.rs` may use its children, and the children must not
use it back — they use their siblings or what lies below them.

Two graphs are checked: the modules, and the top-level folders (every module under `route/`
counts as `route`). Each is printed as `module -> dependencies`, lowest layer first, then every
cycle; the exit status is 1 when either graph has one.
"""

import re
import sys
from pathlib import Path

MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;", re.M)
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# A path starting at a module anchor: crate::a::b, super::super::x, self::x.
ANCHORED = re.compile(r"\b(crate|super|self)((?:\s*::\s*(?:" + IDENT + r"|\*))+)")
USE_STMT = re.compile(r"\buse\s+([^;]+);", re.S)


def strip_comments_and_strings(text):
    """Blanks out comments, string and char literals (keeps line structure)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
            continue
        m = re.match(r'(b?r)(#*)"', text[i:]) if c in "rb" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")) else None
        if m:
            end = '"' + m.group(2)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
            continue
        if c == '"' or (c == "b" and text.startswith('b"', i)):
            j = i + (2 if c == "b" else 1)
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
            continue
        if c == "'":
            # A char literal ('a', '\n', '\u{..}'), not a lifetime ('a).
            m = re.match(r"'(?:\\(?:u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'", text[i:])
            if m:
                out.append("' '")
                i += len(m.group(0))
                continue
        out.append(c)
        i += 1
    return "".join(out)


def drop_test_blocks(code):
    """Removes `#[cfg(test)]` items: inline `mod x { .. }` blocks and single items."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]", code)
        if not m:
            return code
        start = m.start()
        j = m.end()
        # The item runs to its matching closing brace, or to `;` if that comes first.
        depth = 0
        while j < len(code):
            ch = code[j]
            if ch == ";" and depth == 0:
                j += 1
                break
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            j += 1
        code = code[:start] + "\n" * code.count("\n", start, j) + code[j:]


def test_modules(raw):
    """Names of child modules declared under `#[cfg(test)]`."""
    return set(re.findall(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", raw))


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+as\s+" + IDENT, "", tree)
    tree = re.sub(r"\s+", "", tree)
    results = []

    def walk(prefix, text):
        parts, depth, cur = [], 0, ""
        for ch in text:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += ch == "{"
            depth -= ch == "}"
            cur += ch
        parts.append(cur)
        for part in parts:
            if not part:
                continue
            brace = part.find("{")
            if brace >= 0 and part.endswith("}"):
                walk(prefix + part[:brace], part[brace + 1 : -1])
            else:
                results.append(prefix + part)

    walk("", tree)
    return results


class Crate:
    def __init__(self, src):
        self.src = Path(src)
        root = self.src / "lib.rs"
        if not root.exists():
            root = self.src / "main.rs"
        self.files = {}  # module path (tuple) -> file
        self.children = {}  # module path -> set of child names
        self.add((), root)

    def add(self, path, file):
        self.files[path] = file
        raw = file.read_text()
        tests = test_modules(raw)
        code = strip_comments_and_strings(raw)
        self.children[path] = set()
        # Inline modules (generated code included in a `mod x { .. }`) are modules of their
        # own with no file: paths into them are not paths into this file.
        for name in re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*\{", drop_test_blocks(code), re.M):
            self.children[path].add(name)
            self.files[path + (name,)] = None
            self.children[path + (name,)] = set()
        for name in MOD_DECL.findall(code):
            if name in tests:
                continue
            base = file.parent if file.name in ("mod.rs", "lib.rs", "main.rs") else file.with_suffix("")
            for candidate in (base / f"{name}.rs", base / name / "mod.rs"):
                if candidate.exists():
                    self.children[path].add(name)
                    self.add(path + (name,), candidate)
                    break

    def resolve(self, here, segments):
        """The module a path names, from module `here`; None for other crates."""
        if not segments:
            return None
        first = segments[0]
        if first == "crate":
            base, rest = (), segments[1:]
        elif first in ("super", "self"):
            base = here
            rest = list(segments)
            while rest and rest[0] in ("super", "self"):
                if rest[0] == "super":
                    base = base[:-1]
                rest = rest[1:]
        elif first in self.children.get(here, ()):
            base, rest = here, segments
        elif first in self.children[()] and here == ():
            base, rest = (), segments
        else:
            return None
        target = base
        for seg in rest:
            if seg in self.children.get(target, ()):
                target = target + (seg,)
            else:
                break
        return target

    def edges(self):
        graph = {path: set() for path in self.files}
        for path, file in self.files.items():
            if file is None:
                continue
            code = drop_test_blocks(strip_comments_and_strings(file.read_text()))
            code_wo_mods = MOD_DECL.sub("", code)
            paths = []
            for stmt in USE_STMT.findall(code_wo_mods):
                stmt = re.sub(r"^\s*(?:pub(?:\([^)]*\))?\s+)?", "", stmt)
                paths.extend(expand_use(stmt))
            for m in ANCHORED.finditer(USE_STMT.sub("", code_wo_mods)):
                paths.append(m.group(1) + re.sub(r"\s+", "", m.group(2)))
            # Paths through a child module named directly (`child::x`, in the declaring file).
            for child in self.children.get(path, ()):
                for _ in re.finditer(r"(?<![:\w])" + child + r"\s*::", USE_STMT.sub("", code_wo_mods)):
                    paths.append(child + "::x")
            for p in paths:
                segments = [s for s in p.split("::") if s]
                target = self.resolve(path, segments)
                if target is not None and target != path:
                    graph[path].add(target)
        return graph


def name(path, root="crate"):
    return "::".join(path) if path else root


def cycles(graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layered(graph):
    """Nodes ordered so that dependencies come first (cycles broken arbitrarily)."""
    order, seen = [], set()

    def visit(v, trail):
        if v in seen or v in trail:
            return
        trail.add(v)
        for w in sorted(graph[v]):
            visit(w, trail)
        trail.discard(v)
        seen.add(v)
        order.append(v)

    for v in sorted(graph):
        visit(v, set())
    return order


def show(title, graph, quiet, label):
    found = cycles(graph)
    if not quiet:
        print(f"# {title}")
        for v in layered(graph):
            deps = ", ".join(label(w) for w in sorted(graph[v]))
            print(f"{label(v)} -> {deps}" if deps else label(v))
    for comp in found:
        print(f"cycle in {title}: " + " <-> ".join(label(v) for v in comp), file=sys.stderr)
    return not found


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quiet = "--quiet" in sys.argv
    if len(args) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    crate = Crate(args[0])
    graph = crate.edges()
    # The crate root wires everything together: it is the top, and nothing may use it.
    folders = {}
    for v, deps in graph.items():
        fv = v[:1]
        folders.setdefault(fv, set())
        for w in deps:
            if w[:1] != fv:
                folders[fv].add(w[:1])
    ok = show(f"modules of {args[0]}", graph, quiet, name)
    ok = show(f"top-level modules of {args[0]}", folders, quiet, name) and ok
    if ok and not quiet:
        print(f"no cycle in {args[0]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
