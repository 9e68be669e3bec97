#!/usr/bin/env python3
"""What the unindexed tail costs a read by conversation (src/db/order.rs), in
Python's sqlite3 with the hub's schema and queries (no hub involved).

1,000 conversations, 100,000 messages in the conversation order, then a tail
of TAIL messages not indexed yet (default 4,095: the most a commit leaves).
Times the last-sequence read and a 50-message history page, for
conversations picked in turn, three ways: scanning the tail's rows (the
statements of `e8ec4ef`, which read the tail backwards from the newest),
with the conversation's part of the tail known in memory (src/db/reads.rs
now: `order::Tail`, the order's page, then the part's rows by `local_id`),
and with no tail at all. Prints medians of 5 rounds in µs.

    scripts/tail-read-cost.py
    TAIL=2047 scripts/tail-read-cost.py
"""
import os
import random
import sqlite3
import statistics
import tempfile
import time
import uuid

TAIL = int(os.environ.get("TAIL", "4095"))
INDEXED = 100_000
ROUNDS = 5
READS = 1000

SCHEMA = """
CREATE TABLE dm_messages (local_id INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
  conversation_id TEXT NOT NULL, sender_pubkey TEXT NOT NULL, encrypted_payload BLOB NOT NULL,
  nonce BLOB NOT NULL, ephemeral_pubkey BLOB, timestamp INTEGER NOT NULL,
  server_sequence INTEGER NOT NULL, sender_display_name TEXT, created_at INTEGER NOT NULL);
CREATE TABLE dm_message_order (conversation BLOB NOT NULL, server_sequence INTEGER NOT NULL,
  message INTEGER NOT NULL, PRIMARY KEY (conversation, server_sequence)) WITHOUT ROWID;
CREATE TABLE dm_message_order_state (id INTEGER PRIMARY KEY CHECK (id = 1),
  indexed_through INTEGER NOT NULL, sweep_through INTEGER NOT NULL, sweep_key BLOB);
INSERT INTO dm_message_order_state VALUES (1, 0, 0, NULL);
"""
# Between sweeps (sweep_through = indexed_through), src/db/order.rs's tail().
TAIL_SQL = "m.local_id > (SELECT indexed_through FROM dm_message_order_state)"
COLUMNS = "m.id, m.conversation_id, m.sender_pubkey, m.encrypted_payload, m.nonce, " \
          "m.ephemeral_pubkey, m.timestamp, m.server_sequence, m.sender_display_name, m.created_at"
# The statements of `e8ec4ef`'s src/db/reads.rs (max_sequence, history
# before), which scanned the tail.
LAST = f"""SELECT max(
  COALESCE((SELECT max(server_sequence) FROM dm_message_order WHERE conversation = ?2), 0),
  COALESCE((SELECT m.server_sequence FROM dm_messages m
            WHERE {TAIL_SQL} AND m.conversation_id = ?1 ORDER BY m.local_id DESC LIMIT 1), 0))"""
PAGE = f"""SELECT * FROM (
  SELECT * FROM (SELECT {COLUMNS} FROM dm_message_order o
    JOIN dm_messages m ON m.local_id = o.message
    WHERE o.conversation = ?2 AND o.server_sequence < ?3
    ORDER BY o.server_sequence DESC LIMIT ?4)
  UNION ALL
  SELECT {COLUMNS} FROM dm_messages m
  WHERE {TAIL_SQL} AND m.conversation_id = ?1 AND m.server_sequence < ?3)
ORDER BY server_sequence DESC LIMIT ?4"""
# Today's: the order alone, then the part's rows one by one.
ORDER_LAST = "SELECT COALESCE(max(server_sequence), 0) FROM dm_message_order WHERE conversation = ?1"
ORDER_PAGE = f"""SELECT {COLUMNS} FROM dm_message_order o JOIN dm_messages m ON m.local_id = o.message
  WHERE o.conversation = ?1 AND o.server_sequence < ?2 ORDER BY o.server_sequence DESC LIMIT ?3"""
ROW = f"SELECT {COLUMNS} FROM dm_messages m WHERE m.local_id = ?1"


def timed(read):
    rounds = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for i in range(READS):
            read(i)
        rounds.append((time.perf_counter() - started) / READS * 1e6)
    return statistics.median(rounds)


def statement(c, sql, args):
    return lambda i: c.execute(sql, args(i)).fetchall()


def main():
    with tempfile.TemporaryDirectory() as directory:
        c = sqlite3.connect(os.path.join(directory, "tail.db"), isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=OFF")
        c.executescript(SCHEMA)
        conversations = [uuid.uuid4() for _ in range(1000)]
        seqs = [0] * 1000

        def add(n):
            c.execute("BEGIN")
            for _ in range(n):
                k = random.randrange(1000)
                seqs[k] += 1
                c.execute("INSERT INTO dm_messages (id, conversation_id, sender_pubkey, "
                          "encrypted_payload, nonce, timestamp, server_sequence, "
                          "sender_display_name, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                          (str(uuid.uuid4()), str(conversations[k]), "a" * 64, os.urandom(296),
                           os.urandom(24), 1, seqs[k], "load-0", 1))
            c.execute("COMMIT")

        def index():
            # Python's SQLite may lack unhex(): the 16-byte key is made here.
            rows = c.execute("SELECT conversation_id, server_sequence, local_id FROM dm_messages "
                             f"m WHERE {TAIL_SQL}").fetchall()
            c.execute("BEGIN")
            c.executemany("INSERT INTO dm_message_order VALUES (?,?,?)",
                          sorted((uuid.UUID(r[0]).bytes, r[1], r[2]) for r in rows))
            c.execute("UPDATE dm_message_order_state SET indexed_through = "
                      "(SELECT max(local_id) FROM dm_messages)")
            c.execute("COMMIT")

        for _ in range(INDEXED // 10_000):
            add(10_000)
            index()
        add(TAIL)

        def last(i):
            k = conversations[i % 1000]
            return (str(k), k.bytes)

        def page(i):
            k = conversations[i % 1000]
            return (str(k), k.bytes, 1 << 62, 51)

        # The writer's tail by conversation (order::Tail): (sequence, local_id).
        parts = {}
        for conversation, seq, local_id in c.execute(
                f"SELECT conversation_id, server_sequence, local_id FROM dm_messages m "
                f"WHERE {TAIL_SQL} ORDER BY local_id"):
            parts.setdefault(conversation, []).append((seq, local_id))

        def part_last(i):
            k = conversations[i % 1000]
            part = parts.get(str(k), [])
            ordered = c.execute(ORDER_LAST, (k.bytes,)).fetchone()[0]
            return max(ordered, part[-1][0] if part else 0)

        def part_page(i):
            k = conversations[i % 1000]
            found = {row[7]: row for row in c.execute(ORDER_PAGE, (k.bytes, 1 << 62, 51))}
            for seq, local_id in reversed(parts.get(str(k), [])[-51:]):
                if seq not in found:
                    row = c.execute(ROW, (local_id,)).fetchone()
                    found[row[7]] = row
            return sorted(found, reverse=True)[:51]

        scan = (timed(statement(c, LAST, last)), timed(statement(c, PAGE, page)))
        known = (timed(part_last), timed(part_page))
        index()
        without = (timed(statement(c, LAST, last)), timed(statement(c, PAGE, page)))
        print(f"SQLite {sqlite3.sqlite_version}, {INDEXED} messages indexed, tail of {TAIL}:")
        print(f"  last sequence  scanning the tail {scan[0]:7.1f} µs, its part in memory "
              f"{known[0]:6.1f} µs, no tail {without[0]:6.1f} µs")
        print(f"  history page   scanning the tail {scan[1]:7.1f} µs, its part in memory "
              f"{known[1]:6.1f} µs, no tail {without[1]:6.1f} µs")


if __name__ == "__main__":
    main()
