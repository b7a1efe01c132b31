-- Storm control (SPEC §6.5): deliveries parked as `grouped`, `suppressed` or `held`,
-- the group state per target and key, and the look-up inhibition makes.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check
    CHECK (state IN ('pending', 'in_flight', 'delivered', 'dead',
                     'grouped', 'suppressed', 'held'));
-- 1 once the storm gate let the row through (or an operator re-queued it).
ALTER TABLE deliveries ADD COLUMN storm_checked integer NOT NULL DEFAULT 0;
-- The group key a `grouped`/`held` row waits under, and the `event.group` that carried it.
ALTER TABLE deliveries ADD COLUMN group_key text;
ALTER TABLE deliveries ADD COLUMN carrier text;
CREATE INDEX deliveries_parked ON deliveries (target, state, group_key, id)
    WHERE carrier IS NULL AND state IN ('grouped', 'held');
CREATE INDEX notifications_event_at ON notifications (event_at);

CREATE TABLE storm_groups (
    target       text NOT NULL,
    key          text NOT NULL,
    last_sent_at double precision,
    flush_at     double precision,
    updated_at   double precision NOT NULL,
    PRIMARY KEY (target, key)
);
