-- Several writers (SPEC §9): claim tokens, the shared rate budget, the poll lease.

-- The token of the claim a row is in flight under; outcomes must carry it.
ALTER TABLE deliveries ADD COLUMN claim_token TEXT;

-- The next free send slot of a rate-limited target (Unix seconds).
ALTER TABLE target_state ADD COLUMN next_send_at REAL;

-- The poll lease: holder, fencing epoch and expiry (one row per lease name).
CREATE TABLE poll_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT,
    epoch      INTEGER NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
