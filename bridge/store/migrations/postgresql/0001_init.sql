-- fleet-bridge PostgreSQL schema, version 1 (the SQLite schemas 1 to 4 in one step).
-- Times are Unix seconds (double precision) so both stores share their code paths
-- and tests; the lease and claim expiries are set from the database clock where
-- several replicas must agree on them.

-- Each fact once: the body holds ticket, device and the rest.
CREATE TABLE notifications (
    id         text PRIMARY KEY,
    type       text NOT NULL,
    created_at double precision NOT NULL,
    event_at   double precision,
    body       text NOT NULL
);
CREATE INDEX notifications_created_at ON notifications (created_at);

-- Identity ids follow creation order within a target's queue. They are never
-- shown as cursors: the API's cursors are opaque.
CREATE TABLE deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id text NOT NULL REFERENCES notifications (id),
    target          text NOT NULL,
    state           text NOT NULL
                    CHECK (state IN ('pending', 'in_flight', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at double precision,
    lease_until     double precision,
    claim_token     text,
    last_status     integer,
    last_error      text,
    created_at      double precision NOT NULL,
    updated_at      double precision NOT NULL
);
-- The work queue: unfinished rows of a target in creation order.
CREATE INDEX deliveries_open ON deliveries (target, id)
    WHERE state IN ('pending', 'in_flight');
CREATE INDEX deliveries_due ON deliveries (target, next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX deliveries_leased ON deliveries (target, lease_until)
    WHERE state = 'in_flight';
CREATE INDEX deliveries_dead ON deliveries (target, id)
    WHERE state = 'dead';
CREATE INDEX deliveries_notification ON deliveries (notification_id);

-- De-dup memory: unique by ticket, written insert-if-absent / revision CAS.
CREATE TABLE seen_tickets (
    ticket        text PRIMARY KEY,
    revision      integer NOT NULL,
    fingerprint   text NOT NULL,
    first_seen_at double precision NOT NULL,
    updated_at    double precision NOT NULL
);
CREATE INDEX seen_tickets_updated_at ON seen_tickets (updated_at);

CREATE TABLE cursors (
    job        text PRIMARY KEY,
    value      double precision NOT NULL,
    updated_at double precision NOT NULL
);

CREATE TABLE kv (
    kind       text NOT NULL,
    key        text NOT NULL,
    value      text NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX kv_updated_at ON kv (updated_at);

-- Target state shared by every replica: pause, Retry-After hold, rate budget.
-- Claims of a capped target lock its row, so the in-flight cap holds across replicas.
CREATE TABLE target_state (
    target        text PRIMARY KEY,
    paused        boolean NOT NULL DEFAULT false,
    paused_reason text,
    hold_until    double precision,
    failures      integer NOT NULL DEFAULT 0,   -- consecutive transient failures
    probe_at      double precision,             -- while failing: when the next probe may go
    next_send_at  double precision,
    updated_at    double precision NOT NULL
);

-- The poll lease (SPEC §9).
CREATE TABLE poll_lease (
    name       text PRIMARY KEY,
    holder     text,
    epoch      bigint NOT NULL,
    expires_at double precision NOT NULL
);
