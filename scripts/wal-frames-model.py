#!/usr/bin/env python3
"""WAL frames a group commit writes, for the hub's message table and two
alternatives, modelled in Python's sqlite3 (no hub involved).

1,000 conversations, 100,000 messages already stored, then 300 commits of
106 messages (or BATCH), each from a random conversation, with UUIDv7 ids and a
256-byte payload (plus the 40 bytes v2 adds): about what `--window 8`
commits. Prints WAL frames per commit and WAL bytes per message.

    scripts/wal-frames-model.py              # all three
    scripts/wal-frames-model.py rowid        # one: rowid, worowid, intkey
    BATCH=6 scripts/wal-frames-model.py      # commits of 6 (about 5,000/s)

rowid:   today's table (TEXT conversation id, UNIQUE(conversation_id,
         server_sequence), TEXT primary key).
worowid: WITHOUT ROWID, PRIMARY KEY (conversation_id, server_sequence).
intkey:  today's table with an INTEGER conversation key.
"""
import os
import random
import sqlite3
import sys
import tempfile
import time
import uuid

COLUMNS = "sender TEXT NOT NULL, payload BLOB NOT NULL, nonce BLOB NOT NULL, eph BLOB, " \
          "ts INTEGER NOT NULL, seq INTEGER NOT NULL, name TEXT, created INTEGER NOT NULL"
SCHEMAS = {
    "rowid": f"CREATE TABLE m (id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, {COLUMNS}, "
             "UNIQUE(conversation_id, seq))",
    "worowid": f"CREATE TABLE m (id TEXT NOT NULL UNIQUE, conversation_id TEXT NOT NULL, {COLUMNS}, "
               "PRIMARY KEY(conversation_id, seq)) WITHOUT ROWID",
    "intkey": f"CREATE TABLE m (id TEXT PRIMARY KEY, conversation_id INTEGER NOT NULL, {COLUMNS}, "
              "UNIQUE(conversation_id, seq))",
}


BATCH = int(os.environ.get("BATCH", "106"))


def uuid7():
    ms = int(time.time() * 1000)
    r = random.getrandbits(74)
    n = (ms << 80) | (0x7 << 76) | ((r >> 62) << 64) | (0x2 << 62) | (r & ((1 << 62) - 1))
    return str(uuid.UUID(int=n))


def model(variant, directory):
    path = os.path.join(directory, f"{variant}.db")
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA wal_autocheckpoint=0")
    c.execute("PRAGMA synchronous=OFF")
    c.execute(SCHEMAS[variant])
    conversations = [str(uuid.uuid4()) for _ in range(1000)]
    seqs = [0] * 1000

    def commit(n):
        c.execute("BEGIN")
        for _ in range(n):
            i = random.randrange(1000)
            seqs[i] += 1
            key = i if variant == "intkey" else conversations[i]
            c.execute("INSERT INTO m VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (uuid7(), key, "a" * 64, os.urandom(296), os.urandom(24), None, 1,
                       seqs[i], "load-0", 1))
        c.execute("COMMIT")

    for done in range(1000):
        commit(100)
        if done % 250 == 249:
            print(f"  {variant}: {done + 1} of 1000 warm-up commits", file=sys.stderr)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    commits = 300
    for _ in range(commits):
        commit(BATCH)
    wal = os.path.getsize(path + "-wal")
    c.close()
    print(f"{variant:8} {wal / (4096 + 24) / commits:6.1f} frames/commit "
          f"{wal / commits / BATCH:7.0f} WAL bytes/message")


def main():
    variants = sys.argv[1:] or list(SCHEMAS)
    for v in variants:
        if v not in SCHEMAS:
            sys.exit(__doc__)
    with tempfile.TemporaryDirectory() as directory:
        for v in variants:
            model(v, directory)


if __name__ == "__main__":
    main()
