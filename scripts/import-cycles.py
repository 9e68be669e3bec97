#!/usr/bin/env python3
"""Lists import cycles between the modules of src/ (a module is a file).

Every path that names a crate module counts, however it is written:
`crate::a::b`, `super::b`, `self::b`, a grouped `use crate::{a, b::c}`, and a
module brought into scope by `use` and named later (`use crate::service;`
then `service::ws::handle`). Comments and string literals are left out.

Prints the strongly connected components of the module graph with the edges
inside each, then `cycles: N`. Exit status 1 when there is a cycle that is
not allowed by --allow (a pair `a,b` of modules that may import each other,
repeatable).

Also checks the storage seam: no module outside the storage layer (`store`,
`db` and their children) may name an engine, that is import an engine's
module (`store::sqlite`, `store::postgres`, `db::reads`, ...) or use an
engine's crate (`rusqlite`, `tokio_postgres`, ...), unless --allow-engine
names it. And the edge's: only `http::*`, `actors::session` and
`actors::ws_codec` may use `http::error` (errors as HTTP and WebSocket
answers). Run from the repository root: scripts/import-cycles.py"""
import argparse
import os
import re
import sys

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--allow", action="append", default=[],
                    help="a pair 'a,b' of modules allowed to import each other")
parser.add_argument("--allow-engine", action="append", default=[],
                    help="a module outside the storage layer allowed to name an engine")
parser.add_argument("--root", default="src")
args = parser.parse_args()


def strip(src):
    """The source without comments and string literals."""
    src = re.sub(r'/\*.*?\*/', ' ', src, flags=re.S)
    src = re.sub(r'r#*"(?:.|\n)*?"#*', '""', src)
    src = re.sub(r'"(?:\\.|[^"\\])*"', '""', src)
    return '\n'.join(l.split('//')[0] for l in src.split('\n'))


files = {}
for root, _, names in os.walk(args.root):
    for name in names:
        if name.endswith('.rs'):
            path = os.path.join(root, name)
            files[path] = strip(open(path).read())


def modpath(p):
    m = p[len(args.root) + 1:-3]
    if m.endswith('/mod'):
        m = m[:-4]
    if m in ('lib', 'main'):
        m = ''
    return m.replace('/', '::')


mods = {modpath(p): p for p in files}


def absolute(path, cur):
    """`crate::`/`super::`/`self::` path as segments from the crate root."""
    parts = path.split('::')
    base = cur.split('::') if cur else []
    if parts[0] == 'crate':
        return parts[1:]
    if parts[0] == 'self':
        return base + parts[1:]
    if parts[0] == 'super':
        up = base[:-1]
        parts = parts[1:]
        while parts and parts[0] == 'super':
            up = up[:-1]
            parts = parts[1:]
        return up + parts
    return None


def module_of(segments):
    """The longest prefix of `segments` that is a module, or None."""
    for i in range(len(segments), 0, -1):
        m = '::'.join(segments[:i])
        if m in mods:
            return m
    return None


USE = re.compile(r'\buse\s+((?:crate|super|self)(?:::\w+)*)(?:::\{([^;]*)\})?(?:\s+as\s+(\w+))?\s*;', re.S)


def use_items(prefix, group):
    """(full path, bound name) of every item of a `use`, groups expanded."""
    if group is None:
        yield prefix, prefix.split('::')[-1]
        return
    depth, item, items = 0, '', []
    for ch in group:
        if ch == '{':
            depth += 1
        elif ch == '}':
            depth -= 1
        if ch == ',' and depth == 0:
            items.append(item)
            item = ''
        else:
            item += ch
    items.append(item)
    for item in (i.strip() for i in items):
        if not item or item == '*':
            continue
        m = re.match(r'([\w:]+?)(?:::\{(.*)\})?(?:\s+as\s+(\w+))?$', item, re.S)
        if not m:
            continue
        head = item.split('::')[0]
        if head == 'self':
            yield prefix, m.group(3) or prefix.split('::')[-1]
            continue
        full = prefix + '::' + m.group(1)
        if m.group(2) is not None:
            yield from use_items(full, m.group(2))
        else:
            yield full, m.group(3) or m.group(1).split('::')[-1]


ENGINE_MODULES = ('store::sqlite', 'store::postgres', 'db::reads', 'db::writes',
                  'db::migrations', 'db::postgres')
ENGINE_CRATES = re.compile(r'\b(rusqlite|r2d2_sqlite|r2d2|tokio_postgres|deadpool_postgres)::')


def in_layer(module, layer):
    return module == layer or module.startswith(layer + '::')


def storage_layer(module):
    return in_layer(module, 'store') or in_layer(module, 'db')


engine_names = []
graph = {}
for p, src in files.items():
    cur = modpath(p)
    if not storage_layer(cur) and cur not in args.allow_engine:
        for m in ENGINE_CRATES.finditer(src):
            engine_names.append((cur, m.group(1)))
    deps = set()
    aliases = {}
    for m in USE.finditer(src):
        for full, name in use_items(m.group(1), m.group(2)):
            if m.group(3) and m.group(2) is None:
                name = m.group(3)
            segs = absolute(full, cur)
            if segs is None:
                continue
            target = module_of(segs)
            if target is not None:
                deps.add(target)
                if '::'.join(segs) in mods:
                    aliases[name] = segs
    for m in re.finditer(r'\b((?:crate|super|self)(?:::\w+)+)', src):
        segs = absolute(m.group(1), cur)
        target = segs and module_of(segs)
        if target:
            deps.add(target)
    for name, segs in aliases.items():
        for m in re.finditer(r'(?<![\w:])' + re.escape(name) + r'((?:::\w+)+)', src):
            target = module_of(segs + m.group(1).split('::')[1:])
            if target:
                deps.add(target)
    deps.discard(cur)
    graph[cur] = deps
    if not storage_layer(cur) and cur not in args.allow_engine:
        for dep in sorted(deps):
            if any(in_layer(dep, e) for e in ENGINE_MODULES):
                engine_names.append((cur, dep))

sys.setrecursionlimit(10000)
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]


def connect(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph.get(v, ()):
        if w not in index:
            connect(w)
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
            sccs.append(sorted(comp))


for v in sorted(graph):
    if v not in index:
        connect(v)

allowed = {frozenset(a.split(',')) for a in args.allow}
failing = 0
for comp in sccs:
    ok = frozenset(comp) in allowed
    failing += 0 if ok else 1
    print(comp, '(allowed)' if ok else '')
    for a in comp:
        for b in sorted(graph[a]):
            if b in comp:
                print('  ', a, '->', b)
print('cycles:', len(sccs), '(not allowed: %d)' % failing)
for module, name in sorted(set(engine_names)):
    print('  ', module or 'crate root', 'names an engine:', name)
print('modules outside the storage layer that name an engine:',
      len({m for m, _ in engine_names}))

# The wire form of errors (HTTP status, JSON, the WebSocket's
# ErrorResponse) belongs to the edge: http::*, the session and its codec.
EDGE = ('http', 'actors::session', 'actors::ws_codec')
off_edge = sorted(m for m, deps in graph.items()
                  if 'http::error' in deps and not any(in_layer(m, e) for e in EDGE))
for module in off_edge:
    print('  ', module, 'uses http::error outside the edge')
print('modules outside the edge that use http::error:', len(off_edge))
sys.exit(1 if failing or engine_names or off_edge else 0)
