-- fleet-bridge SQLite schema, version 1.
-- Times are Unix seconds (REAL). JSON is stored as TEXT.
-- Partial indexes only serve a query whose WHERE repeats their condition verbatim,
-- so sqlite.py spells `state IN ('pending', 'in_flight')` exactly as written here.

-- One row per notification; `body` is the envelope JSON every target receives.
CREATE TABLE notifications (
    id         TEXT PRIMARY KEY,
    type       TEXT NOT NULL,
    created_at REAL NOT NULL,
    event_at   REAL,
    ticket     TEXT,
    device_cid TEXT,
    body       TEXT NOT NULL
);
-- replay (created_at range), prune (cutoff) and count_notifications(type).
CREATE INDEX notifications_created_at ON notifications (created_at);
CREATE INDEX notifications_type ON notifications (type);

-- One row per (notification, target) attempt chain; replay adds more rows.
-- AUTOINCREMENT: ids are never reused after prune, so they stay a stable creation
-- order and an unambiguous API cursor.
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id TEXT NOT NULL REFERENCES notifications (id),
    target          TEXT NOT NULL,
    state           TEXT NOT NULL
                    CHECK (state IN ('pending', 'in_flight', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    lease_until     REAL,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
-- The work queue: unfinished rows of a target in creation order. claim walks it
-- without touching the table (covering), and the FIFO head is its first entry.
-- Finished rows leave it, so it stays as small as the backlog.
CREATE INDEX deliveries_open ON deliveries (target, id, state, next_attempt_at, lease_until)
    WHERE state IN ('pending', 'in_flight');
-- next_due_at: the earliest pending row of a target in O(log n).
CREATE INDEX deliveries_due ON deliveries (target, next_attempt_at)
    WHERE state = 'pending';
-- In-flight rows by lease expiry: next_due_at and recover. Tiny: only rows being sent.
CREATE INDEX deliveries_leased ON deliveries (target, lease_until)
    WHERE state = 'in_flight';
-- Dead letters per target (queue_counts, the API's dead list).
CREATE INDEX deliveries_dead ON deliveries (target, id)
    WHERE state = 'dead';
-- prune and the foreign-key check when a notification is deleted.
CREATE INDEX deliveries_notification ON deliveries (notification_id);

-- De-dup memory: the last revision and media fingerprint of each ticket.
-- A rowid table on purpose: tickets are random UUIDs, and each ingest then dirties
-- pages of the small key index rather than of the wide rows (faster commits).
CREATE TABLE seen_tickets (
    ticket        TEXT PRIMARY KEY,
    revision      INTEGER NOT NULL,
    fingerprint   TEXT NOT NULL,
    first_seen_at REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX seen_tickets_updated_at ON seen_tickets (updated_at);

-- Poll cursors, one per job.
CREATE TABLE cursors (
    job        TEXT PRIMARY KEY,
    value      REAL NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;

-- Small keyed JSON state: clip tasks, uploads, Slack thread ids.
CREATE TABLE kv (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX kv_updated_at ON kv (updated_at);

-- Pause / hold state per target.
CREATE TABLE target_state (
    target        TEXT PRIMARY KEY,
    paused        INTEGER NOT NULL DEFAULT 0,
    paused_reason TEXT,
    hold_until    REAL,
    updated_at    REAL NOT NULL
) WITHOUT ROWID;
