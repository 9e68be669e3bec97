#!/usr/bin/env python3
"""CPU time per part of a run, per accepted message.

Runs a command (a `united-hub load ... --json FILE` run), samples every
process on the machine from /proc every 100 ms, and afterwards sums the CPU
time (user + system) each part used during the run: the hub nodes
(`united-hub serve`), the load generator, PostgreSQL and nats-server. Divided
by the messages the run accepted (read from its JSON report), that is what
each part costs per message. Linux only.

    scripts/cpu-per-part.py target/release/united-hub load --cluster 2 \\
        --pairs 1000 --rate 0 --window 8 --duration 10 --json /tmp/run.json
"""
import json
import os
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def part_of(pid):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        comm = open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return None
    args = [c.decode(errors="replace") for c in cmd if c]
    if comm.startswith("postgres") or (args and args[0].endswith("postgres")):
        return "postgresql"
    if "nats-server" in comm:
        return "nats-server"
    if any(a == "serve" for a in args) and any("united-hub" in a for a in args[:1]):
        return "hub nodes"
    if any(a == "load" for a in args) and any("united-hub" in a for a in args[:1]):
        return "load generator"
    return None


def cpu(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def main():
    argv = sys.argv[1:]
    if "--json" not in argv:
        sys.exit("the command must write a --json report")
    report = argv[argv.index("--json") + 1]
    before = {p: cpu(p) for p in os.listdir("/proc") if p.isdigit()}
    seen = {}  # pid -> (part, last cpu seconds, cpu at first sight)
    started = time.time()
    child = subprocess.Popen(argv)
    while child.poll() is None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            part = seen[pid][0] if pid in seen else part_of(pid)
            if part is None:
                continue
            now = cpu(pid)
            if now is None:
                continue
            base = before.get(pid) or 0.0 if pid not in seen else seen[pid][2]
            seen[pid] = (part, now, base)
        time.sleep(0.1)
    wall = time.time() - started
    totals = {}
    for part, last, base in seen.values():
        totals[part] = totals.get(part, 0.0) + (last - base)
    accepted = json.load(open(report))["accepted"]
    print(f"{accepted} messages accepted; wall {wall:.1f} s (setup and verification included)")
    for part, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {part:15} {seconds:7.2f} CPU s   {seconds / accepted * 1e6:6.1f} µs per message")
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
