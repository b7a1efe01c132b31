-- A failing target (SPEC §4): after 5 consecutive transient failures only one probe
-- delivery goes out, at the backoff cadence, until one succeeds. Kept with the rest of
-- the target's control state so a restart (or another replica) keeps probing rather
-- than letting every pending delivery hammer the receiver again.
ALTER TABLE target_state ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE target_state ADD COLUMN probe_at REAL;
