"""The on-disk store-and-forward queue (SQLite in WAL mode) and the device's message sequence.

Inference records land in ``records`` (one small insert per record, so the application never waits for
the network). ``seal_batches`` moves them into ``outbox`` as telemetry messages: each message gets its
``seq`` and final payload when it is sealed, in the same transaction that removes its records, so a
message re-sent after a restart is byte-identical and the platform's (device, seq) idempotency makes
the redelivery a no-op. A message leaves ``outbox`` only when the broker acknowledged it (PUBACK).

Sequence numbers are reserved in durable blocks (``SEQ_BLOCK`` at a time, committed with
``synchronous=FULL`` before any of them is used); a restart skips the rest of the block it finds
reserved, so no seq is ever used twice, whatever instant the process died at.

The disk cap counts the bytes of queued records and sealed payloads. Beyond it the oldest telemetry is
dropped (sealed batches first, they are older than loose records); the number of records dropped is kept
in ``meta`` and handed to the next heartbeat, in the transaction that queues it.
"""

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fleet_agent.protocol import PROTOCOL_VERSION

SEQ_BLOCK = 1000
MAX_BATCH_RECORDS = 500
MAX_PAYLOAD_BYTES = 256 * 1024
DEFAULT_CAP_BYTES = 100 * 1024 * 1024
TELEMETRY = "telemetry"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    leaf TEXT NOT NULL,
    payload BLOB NOT NULL,
    nrecords INTEGER NOT NULL DEFAULT 0,
    retain INTEGER NOT NULL DEFAULT 0
);
"""


def now_ms() -> int:
    return int(time.time() * 1000)


def envelope(seq: int, body: dict, ts: int | None = None) -> bytes:
    """One message body per docs/protocol.md: ``v``, ``seq``, ``ts`` and the topic's fields."""
    message = {"v": PROTOCOL_VERSION, "seq": seq, "ts": now_ms() if ts is None else ts}
    message.update(body)
    return json.dumps(message, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Pending:
    seq: int
    leaf: str
    payload: bytes
    retain: bool


class Outbox:
    def __init__(self, path: Path, *, cap_bytes: int = DEFAULT_CAP_BYTES):
        self.path = path
        self.cap_bytes = cap_bytes
        self._lock = threading.RLock()
        # Autocommit mode: every transaction below is explicit (BEGIN IMMEDIATE ... COMMIT).
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a crash of this process (kill -9); only an OS crash or
        # power cut may lose the newest commits. The seq reservation commits with FULL (see _reserve).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        reserved = self._meta("seq_reserved")
        self._next_seq = reserved + 1
        self._seq_limit = reserved
        self._bytes = self._db.execute(
            "SELECT coalesce((SELECT sum(length(body)) FROM records), 0)"
            " + coalesce((SELECT sum(length(payload)) FROM outbox), 0)"
        ).fetchone()[0]
        self._records = self._db.execute("SELECT count(*) FROM records").fetchone()[0]

    # -- helpers -------------------------------------------------------------------------------------
    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _reserve(self) -> None:
        limit = self._next_seq + SEQ_BLOCK - 1
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._set_meta("seq_reserved", limit)
            self._db.execute("COMMIT")
        finally:
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._seq_limit = limit

    def next_seq(self) -> int:
        """A fresh seq (never used before, never used again), for a message sent outside the outbox."""
        with self._lock:
            if self._next_seq > self._seq_limit:
                self._reserve()
            seq = self._next_seq
            self._next_seq += 1
            return seq

    # -- records -------------------------------------------------------------------------------------
    def add_records(self, records: list[dict]) -> None:
        bodies = [json.dumps(r, separators=(",", ":")) for r in records]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT INTO records (body) VALUES (?)", [(b,) for b in bodies])
            self._bytes += sum(len(b) for b in bodies)
            self._records += len(bodies)
            if self._bytes > self.cap_bytes:
                self._drop_oldest()
            self._db.execute("COMMIT")

    def _drop_oldest(self) -> None:
        """Inside a transaction: drop the oldest telemetry until the queue is at 90% of the cap."""
        goal = int(self.cap_bytes * 0.9)
        dropped = 0
        while self._bytes > goal:
            row = self._db.execute(
                "SELECT seq, length(payload), nrecords FROM outbox WHERE leaf = ? ORDER BY seq LIMIT 1", (TELEMETRY,)
            ).fetchone()
            if row:
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (row[0],))
                self._bytes -= row[1]
                dropped += row[2]
                continue
            rows = self._db.execute("SELECT id, length(body) FROM records ORDER BY id LIMIT 200").fetchall()
            if not rows:
                break
            self._db.execute("DELETE FROM records WHERE id <= ?", (rows[-1][0],))
            self._bytes -= sum(r[1] for r in rows)
            self._records -= len(rows)
            dropped += len(rows)
        self._set_meta("dropped", self._meta("dropped") + dropped)

    def seal_batches(self, *, max_age_s: float = 1.0, force: bool = False) -> int:
        """Turn queued records into telemetry messages: full batches always, a partial one when its
        oldest record waited ``max_age_s`` (or ``force``). Returns how many messages were sealed."""
        sealed = 0
        with self._lock:
            while self._records:
                rows = self._db.execute(
                    "SELECT id, body FROM records ORDER BY id LIMIT ?", (MAX_BATCH_RECORDS,)
                ).fetchall()
                if len(rows) < MAX_BATCH_RECORDS and not force:
                    first_ts = json.loads(rows[0][1]).get("ts", 0)
                    if now_ms() - first_ts < max_age_s * 1000:
                        break
                chunks = _split(rows)
                self._db.execute("BEGIN IMMEDIATE")
                for chunk in chunks:
                    seq = self._seq_in_txn()
                    payload = b'{"v":%d,"seq":%d,"ts":%d,"records":[' % (PROTOCOL_VERSION, seq, now_ms())
                    payload += b",".join(r[1].encode() for r in chunk) + b"]}"
                    self._db.execute(
                        "INSERT INTO outbox (seq, leaf, payload, nrecords) VALUES (?, ?, ?, ?)",
                        (seq, TELEMETRY, payload, len(chunk)),
                    )
                    self._bytes += len(payload)
                self._db.execute("DELETE FROM records WHERE id <= ?", (rows[-1][0],))
                self._bytes -= sum(len(r[1]) for r in rows)
                self._records -= len(rows)
                self._db.execute("COMMIT")
                sealed += len(chunks)
        return sealed

    def _seq_in_txn(self) -> int:
        # A reservation must commit on its own, before the message that uses it: commit the open
        # transaction's work so far, reserve, and continue in a new transaction.
        if self._next_seq > self._seq_limit:
            self._db.execute("COMMIT")
            self._reserve()
            self._db.execute("BEGIN IMMEDIATE")
        seq = self._next_seq
        self._next_seq += 1
        return seq

    # -- messages ------------------------------------------------------------------------------------
    def enqueue(self, leaf: str, body: dict, *, retain: bool = False) -> int:
        """Queue one message (heartbeat, ota/status, ...) durably; returns its seq."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            seq = self._seq_in_txn()
            payload = envelope(seq, body)
            self._db.execute(
                "INSERT INTO outbox (seq, leaf, payload, retain) VALUES (?, ?, ?, ?)", (seq, leaf, payload, int(retain))
            )
            self._bytes += len(payload)
            self._db.execute("COMMIT")
            return seq

    def enqueue_heartbeat(self, build_body) -> int:
        """Queue a heartbeat built by ``build_body(dropped=N, buffer_depth=M)``; the dropped count it
        carries is reset in the same transaction, so each drop is reported exactly once."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            dropped = self._meta("dropped")
            seq = self._seq_in_txn()
            payload = envelope(seq, build_body(dropped=dropped, buffer_depth=self._depth()))
            self._db.execute("INSERT INTO outbox (seq, leaf, payload) VALUES (?, 'heartbeat', ?)", (seq, payload))
            self._bytes += len(payload)
            self._set_meta("dropped", 0)
            self._db.execute("COMMIT")
            return seq

    def pending(self, *, limit: int, after_seq: int = 0) -> list[Pending]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, leaf, payload, retain FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            ).fetchall()
        return [Pending(seq=r[0], leaf=r[1], payload=bytes(r[2]), retain=bool(r[3])) for r in rows]

    def ack(self, seq: int) -> None:
        with self._lock:
            row = self._db.execute("SELECT length(payload) FROM outbox WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return  # dropped by the cap while in flight, or acknowledged twice
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            self._bytes -= row[0]

    # -- introspection -------------------------------------------------------------------------------
    def _depth(self) -> int:
        in_batches = self._db.execute("SELECT coalesce(sum(nrecords), 0) FROM outbox").fetchone()[0]
        return self._records + in_batches

    def depth(self) -> int:
        """Records not yet acknowledged by the broker (loose and in sealed batches)."""
        with self._lock:
            return self._depth()

    def message_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def dropped(self) -> int:
        with self._lock:
            return self._meta("dropped")

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _split(rows) -> list[list]:
    """Split rows into chunks whose telemetry payload fits in MAX_PAYLOAD_BYTES (halving as needed)."""
    pending, out = [rows], []
    while pending:
        chunk = pending.pop(0)
        size = sum(len(r[1]) + 1 for r in chunk) + 100  # records, commas, envelope
        if size > MAX_PAYLOAD_BYTES and len(chunk) > 1:
            half = len(chunk) // 2
            pending[:0] = [chunk[:half], chunk[half:]]
            continue
        out.append(chunk)
    return out
