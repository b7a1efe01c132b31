-- Storm control (SPEC §6.5): deliveries parked as `grouped`, `suppressed` or `held`,
-- the group state per target and key, and the look-up inhibition makes.
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt (once,
-- at the first start of this release) with the same rows, ids and indexes.
CREATE TABLE deliveries_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id TEXT NOT NULL REFERENCES notifications (id),
    target          TEXT NOT NULL,
    state           TEXT NOT NULL
                    CHECK (state IN ('pending', 'in_flight', 'delivered', 'dead',
                                     'grouped', 'suppressed', 'held')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    lease_until     REAL,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    claim_token     TEXT,
    -- 1 once the storm gate let the row through (or an operator re-queued it):
    -- a retry of it is never grouped, suppressed or held again.
    storm_checked   INTEGER NOT NULL DEFAULT 0,
    -- The group key a `grouped`/`held` row waits under, and the id of the
    -- `event.group` notification that carried it (NULL while it waits).
    group_key       TEXT,
    carrier         TEXT
);
INSERT INTO deliveries_new (id, notification_id, target, state, attempts, next_attempt_at,
                            lease_until, last_status, last_error, created_at, updated_at,
                            claim_token)
SELECT id, notification_id, target, state, attempts, next_attempt_at, lease_until,
       last_status, last_error, created_at, updated_at, claim_token
FROM deliveries;
-- Keep AUTOINCREMENT's high-water mark: ids of pruned rows are never reused.
UPDATE sqlite_sequence
SET seq = (SELECT max(seq) FROM sqlite_sequence WHERE name = 'deliveries')
WHERE name = 'deliveries_new'
  AND seq < (SELECT max(seq) FROM sqlite_sequence WHERE name = 'deliveries');
INSERT INTO sqlite_sequence (name, seq)
SELECT 'deliveries_new', seq FROM sqlite_sequence WHERE name = 'deliveries'
  AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'deliveries_new');
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
CREATE INDEX deliveries_open ON deliveries (target, id, state, next_attempt_at, lease_until)
    WHERE state IN ('pending', 'in_flight');
CREATE INDEX deliveries_due ON deliveries (target, next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX deliveries_leased ON deliveries (target, lease_until)
    WHERE state = 'in_flight';
CREATE INDEX deliveries_dead ON deliveries (target, id)
    WHERE state = 'dead';
CREATE INDEX deliveries_notification ON deliveries (notification_id);
-- Rows waiting for their group or the end of a quiet hour: tiny, only the open ones.
CREATE INDEX deliveries_parked ON deliveries (target, state, group_key, id)
    WHERE carrier IS NULL AND state IN ('grouped', 'held');

-- Inhibition looks for notifications near a delivery's occurred_at.
CREATE INDEX notifications_event_at ON notifications (event_at);

-- One row per target and group key: its last send and when waiting members go.
CREATE TABLE storm_groups (
    target       TEXT NOT NULL,
    key          TEXT NOT NULL,
    last_sent_at REAL,
    flush_at     REAL,
    updated_at   REAL NOT NULL,
    PRIMARY KEY (target, key)
) WITHOUT ROWID;
