#!/usr/bin/env python3
"""How long a small write plus fdatasync takes on this disk, with no hub.

Writes 32 KiB at a random offset of a 64 MiB file and fdatasyncs it, every
millisecond, for SECONDS; prints the percentiles and every write over 50 ms
(with its second). Modes:

    sparse     the file is made with ftruncate, so writes allocate blocks
    fallocated the file is made with posix_fallocate: blocks are reserved
               but unwritten, so a write converts an extent
    prefilled  the file is written in full (and synced) first
    grow       prefilled, while another thread appends 3 MB/s to a second
               file and fdatasyncs it every 50 ms (a database that grows)

    scripts/fsync-probe.py prefilled 150

The files live in the current directory (the disk the hub's data dir would
use) and are removed at the end. docs/benchmarks-history.md ("What is left") has what it
showed on the project's machine.
"""
import os
import random
import sys
import threading
import time

CHUNK = 32 * 1024
SIZE = 64 << 20


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "prefilled"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 60
    if mode not in ("sparse", "fallocated", "prefilled", "grow"):
        sys.exit(__doc__)
    probe, grown = "fsync-probe.dat", "fsync-probe-grow.dat"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    if mode == "sparse":
        os.ftruncate(fd, SIZE)
    elif mode == "fallocated":
        os.posix_fallocate(fd, 0, SIZE)
        os.fsync(fd)
    else:
        for _ in range(SIZE // CHUNK):
            os.write(fd, bytes(CHUNK))
        os.fsync(fd)

    stop = threading.Event()
    grower = None
    if mode == "grow":
        g = os.open(grown, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

        def grow():
            offset, synced = 0, time.monotonic()
            while not stop.is_set():
                os.pwrite(g, os.urandom(CHUNK), offset)
                offset += CHUNK
                if time.monotonic() - synced > 0.05:
                    os.fdatasync(g)
                    synced = time.monotonic()
                time.sleep(0.01)
            os.close(g)

        grower = threading.Thread(target=grow)
        grower.start()

    latencies, slow = [], []
    started = time.monotonic()
    last_report = started
    while time.monotonic() - started < seconds:
        offset = random.randrange(0, SIZE // 4096 - CHUNK // 4096) * 4096
        t = time.perf_counter()
        os.pwrite(fd, os.urandom(CHUNK), offset)
        os.fdatasync(fd)
        ms = (time.perf_counter() - t) * 1000
        latencies.append(ms)
        if ms > 50:
            slow.append((round(time.monotonic() - started, 1), round(ms, 1)))
        if time.monotonic() - last_report >= 10:
            last_report = time.monotonic()
            print(f"  {last_report - started:.0f} s: {len(latencies)} writes, "
                  f"{len(slow)} over 50 ms", file=sys.stderr)
        time.sleep(0.001)
    stop.set()
    if grower:
        grower.join()
    os.close(fd)
    for path in (probe, grown):
        if os.path.exists(path):
            os.unlink(path)

    latencies.sort()
    n = len(latencies)
    pct = lambda q: latencies[min(n - 1, int(n * q))]
    print(f"{mode}: {n} writes, p50 {pct(0.5):.2f} ms, p99 {pct(0.99):.2f} ms, "
          f"p99.9 {pct(0.999):.2f} ms, max {latencies[-1]:.1f} ms")
    print("over 50 ms (second, ms):", slow or "none")


if __name__ == "__main__":
    main()
