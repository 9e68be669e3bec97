#!/usr/bin/env python3
"""Lists import cycles between the modules of src/ (a module is a file).

Reads every `crate::`, `super::` and `self::` path outside comments and reports
the strongly connected components of the module graph. Exit status 1 when
there is a cycle. Run from the repository root: scripts/import-cycles.py"""
import re,os,sys
files={}
for root,_,fs in os.walk('src'):
    for f in fs:
        if f.endswith('.rs'):
            p=os.path.join(root,f)
            src=open(p).read()
            src='\n'.join(l for l in src.split('\n') if not l.strip().startswith('//'))
            files[p]=src
def modpath(p):
    m=p[4:-3]
    if m.endswith('/mod'): m=m[:-4]
    if m in ('lib','main'): m=''
    return m.replace('/','::')
mods={modpath(p):p for p in files}
def resolve(path, cur):
    parts=path.split('::')
    if parts[0]=='crate': parts=parts[1:]
    elif parts[0]=='super':
        base=cur.split('::')[:-1]; parts=base+parts[1:]
    elif parts[0]=='self': parts=cur.split('::')+parts[1:]
    else: return None
    for i in range(len(parts),0,-1):
        m='::'.join(parts[:i])
        if m in mods: return m
    return None
g={}
for p,src in files.items():
    cur=modpath(p); deps=set()
    for m in re.finditer(r'\b((?:crate|super|self)(?:::\w+)+)',src):
        r=resolve(m.group(1),cur)
        if r and r!=cur: deps.add(r)
    for m in re.finditer(r'use ((?:crate|super|self)(?:::\w+)*)::\{([^}]*)\}',src,re.S):
        for item in m.group(2).split(','):
            item=item.strip().split(' ')[0].split('::')[0]
            if not item: continue
            r=resolve(m.group(1)+'::'+item,cur)
            if r and r!=cur: deps.add(r)
    g[cur]=deps
sys.setrecursionlimit(10000)
index={};low={};stack=[];on=set();sccs=[];i=[0]
def sc(v):
    index[v]=low[v]=i[0];i[0]+=1;stack.append(v);on.add(v)
    for w in g.get(v,()):
        if w not in index: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],index[w])
    if low[v]==index[v]:
        comp=[]
        while True:
            w=stack.pop();on.discard(w);comp.append(w)
            if w==v:break
        if len(comp)>1: sccs.append(comp)
for v in g:
    if v not in index: sc(v)
for c in sccs:
    print(sorted(c))
    for a in c:
        for b in g[a]:
            if b in c: print('  ',a,'->',b)
print("cycles:", len(sccs))
sys.exit(1 if sccs else 0)
