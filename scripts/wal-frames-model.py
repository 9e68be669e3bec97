#!/usr/bin/env python3
"""WAL frames a group commit writes, for the hub's message table and two
alternatives, modelled in Python's sqlite3 (no hub involved).

1,000 conversations, 100,000 messages already stored, then 300 commits of
106 messages (or BATCH), each from a random conversation, with UUIDv7 ids and a
256-byte payload (plus the 40 bytes v2 adds): about what `--window 8`
commits. Prints WAL frames per commit and WAL bytes per message, then the frames per
commit of each b-tree (as scripts/wal-frames.py does for a running hub).

    scripts/wal-frames-model.py              # all five
    scripts/wal-frames-model.py rowid        # one: rowid, worowid, intkey, blobkey, intblob
    BATCH=10 scripts/wal-frames-model.py     # commits of 10 (about 5,000/s)
    PAGE_SIZE=1024 scripts/wal-frames-model.py rowid   # another page size

rowid:   today's table (TEXT conversation id, UNIQUE(conversation_id,
         server_sequence), TEXT primary key).
worowid: WITHOUT ROWID, PRIMARY KEY (conversation_id, server_sequence).
intkey:  today's table with an INTEGER conversation key.
blobkey: today's table with both UUIDs (message id, conversation id) stored
         as 16-byte BLOBs instead of 36-character TEXT.
intblob: an INTEGER conversation key and a 16-byte BLOB message id.
deferred: today's table without UNIQUE(conversation_id, server_sequence);
         the conversation index is a separate WITHOUT ROWID table that a
         second transaction fills every INDEX_EVERY commits (default 30,
         about 100 ms at 20,000 messages/s) from the rows added since, so
         each conversation's leaf is written once per batch of commits, not
         once per message. Its frames are counted with the commits'. (Reads
         would have to add the rows not yet indexed: a design sketch, not
         built.)

    BATCH=70 INDEX_EVERY=300 scripts/wal-frames-model.py rowid deferred
"""
import collections
import importlib.util
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
    "blobkey": f"CREATE TABLE m (id BLOB PRIMARY KEY, conversation_id BLOB NOT NULL, {COLUMNS}, "
               "UNIQUE(conversation_id, seq))",
    "intblob": f"CREATE TABLE m (id BLOB PRIMARY KEY, conversation_id INTEGER NOT NULL, {COLUMNS}, "
               "UNIQUE(conversation_id, seq))",
}
SCHEMAS["deferred"] = (
    f"CREATE TABLE m (id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, {COLUMNS});"
    "CREATE TABLE mi (conversation_id TEXT NOT NULL, seq INTEGER NOT NULL, "
    "message INTEGER NOT NULL, PRIMARY KEY (conversation_id, seq)) WITHOUT ROWID")
INDEX_EVERY = int(os.environ.get("INDEX_EVERY", "30"))
INTEGER_KEY = ("intkey", "intblob")
BLOB_ID = ("blobkey", "intblob")

# The WAL reader of scripts/wal-frames.py, which sits beside this script.
_spec = importlib.util.spec_from_file_location(
    "wal_frames", os.path.join(os.path.dirname(os.path.abspath(__file__)), "wal-frames.py"))
wal_frames = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wal_frames)


BATCH = int(os.environ.get("BATCH", "106"))
PAGE_SIZE = int(os.environ.get("PAGE_SIZE", "4096"))


def uuid7():
    ms = int(time.time() * 1000)
    r = random.getrandbits(74)
    n = (ms << 80) | (0x7 << 76) | ((r >> 62) << 64) | (0x2 << 62) | (r & ((1 << 62) - 1))
    return uuid.UUID(int=n)


def model(variant, directory):
    path = os.path.join(directory, f"{variant}.db")
    c = sqlite3.connect(path, isolation_level=None)
    c.execute(f"PRAGMA page_size={PAGE_SIZE}")
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA wal_autocheckpoint=0")
    c.execute("PRAGMA synchronous=OFF")
    c.executescript(SCHEMAS[variant])
    conversations = [uuid.uuid4() for _ in range(1000)]
    seqs = [0] * 1000

    indexed = [0]
    commits_done = [0]

    def index_new_rows():
        c.execute("BEGIN")
        c.execute("INSERT INTO mi SELECT conversation_id, seq, rowid FROM m WHERE rowid > ? "
                  "ORDER BY conversation_id, seq", (indexed[0],))
        indexed[0] = c.execute("SELECT max(rowid) FROM m").fetchone()[0]
        c.execute("COMMIT")

    def commit(n):
        if variant == "deferred" and commits_done[0] % INDEX_EVERY == 0:
            index_new_rows()
        commits_done[0] += 1
        c.execute("BEGIN")
        for _ in range(n):
            i = random.randrange(1000)
            seqs[i] += 1
            if variant in INTEGER_KEY:
                key = i
            elif variant in BLOB_ID:
                key = conversations[i].bytes
            else:
                key = str(conversations[i])
            message_id = uuid7().bytes if variant in BLOB_ID else str(uuid7())
            c.execute("INSERT INTO m VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (message_id, key, "a" * 64, os.urandom(296), os.urandom(24), None, 1,
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
    frames = [page for t in wal_frames.commits(path + "-wal") for page in t]
    names = dict(c.execute("SELECT pageno, name || ' ' || pagetype FROM dbstat"))
    c.close()
    print(f"{variant:8} {wal / (PAGE_SIZE + 24) / commits:6.1f} frames/commit "
          f"{wal / commits / BATCH:7.0f} WAL bytes/message")
    by_tree = collections.Counter(names.get(p, "(freed since)") for p in frames)
    for tree, count in by_tree.most_common():
        print(f"         {count / commits:6.2f} a commit  {tree}")


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
