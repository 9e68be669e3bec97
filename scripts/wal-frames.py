#!/usr/bin/env python3
"""Which b-trees a hub's group commits write: the WAL of a running hub,
frame by frame, attributed to tables and indexes. The measured counterpart
of scripts/wal-frames-model.py.

Copies DATA_DIR/united.db and its WAL (with PID given, the hub is stopped
with SIGSTOP for the copy, about 0.2 s, then continued, so both files are
from one instant), reads the WAL's frames up to its last commit, and maps
each frame's page to its b-tree and page type with the `dbstat` table of
Python's sqlite3. Prints frames per commit by b-tree.

    scripts/wal-frames.py DATA_DIR [PID]

Run it during a load run against a separate hub (`united-hub --data-dir D
…` and `united-hub load --url …`). The checkpointer resets the WAL now and
then, so a copy holds the commits since the last reset: hundreds at
5,000 msg/s.
"""
import collections
import os
import shutil
import signal
import sqlite3
import struct
import sys
import tempfile

WAL_HEADER = 32
FRAME_HEADER = 24


def commits(wal):
    """Page numbers of each committed transaction in the WAL."""
    data = open(wal, "rb").read()
    if len(data) < WAL_HEADER:
        return []
    page_size = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    done, current, offset = [], [], WAL_HEADER
    while offset + FRAME_HEADER + page_size <= len(data):
        page, commit_size = struct.unpack(">II", data[offset:offset + 8])
        if data[offset + 8:offset + 16] != salts:
            break  # a frame left from before the last reset
        current.append(page)
        if commit_size:
            done.append(current)
            current = []
        offset += FRAME_HEADER + page_size
    return done


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    data_dir = sys.argv[1]
    pid = int(sys.argv[2]) if len(sys.argv) == 3 else None
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "copy.db")
        if pid:
            os.kill(pid, signal.SIGSTOP)
        try:
            shutil.copy(os.path.join(data_dir, "united.db"), db)
            shutil.copy(os.path.join(data_dir, "united.db-wal"), db + "-wal")
        finally:
            if pid:
                os.kill(pid, signal.SIGCONT)
        transactions = commits(db + "-wal")
        if not transactions:
            sys.exit("no committed frames in the WAL (idle hub, or just reset)")
        # Opening the copy reads the WAL too, so new pages have their b-tree.
        names = dict(sqlite3.connect(db).execute(
            "SELECT pageno, name || ' ' || pagetype FROM dbstat"))
        frames = [page for t in transactions for page in t]
        by_tree = collections.Counter(names.get(p, "(freed since)") for p in frames)
        n = len(transactions)
        print(f"{n} commits, {len(frames)} frames: {len(frames) / n:.1f} a commit, "
              f"{len(set(frames))} distinct pages")
        for tree, count in by_tree.most_common():
            print(f"  {count / n:6.2f} a commit  {tree}")


if __name__ == "__main__":
    main()
