-- One round trip per ingest, and queue plans that do not depend on statistics.
--
-- 1. The writes of an ingest in one statement, so one round trip.
--
-- Before, a page of 100 events cost nine round trips (BEGIN, read the tickets, insert
-- tickets, notifications, deliveries, check the lease, move the cursor, NOTIFY,
-- COMMIT), each waiting its turn on an event loop busy with sends: a backlog drain on
-- PostgreSQL spent most of its time with the poller waiting on these. Now the store
-- reads the tickets (no transaction is needed: the writes below are compare-and-set)
-- and sends everything else as this one call, atomic as any single statement.
--
-- Conflicts raise with codes of their own, which the store turns back into
-- `TicketConflict` (re-run the ingest) and `FencedOut` (not the leader any more):
--   FB001  a ticket was inserted or its revision moved by another writer
--   FB002  the poll lease of the fence is no longer live
--
-- `p_durable = false` commits without waiting for the WAL flush. The store asks for
-- it only when the statement writes nothing but de-dup state, notifications,
-- deliveries and a poll cursor: all of it is derived again from the upstream if a
-- crash of the database server loses it (the cursor goes back with it), and none of
-- it leaves the bridge before a claim, whose commit waits for the flush of the whole
-- WAL before it, this transaction included.
CREATE FUNCTION fleet_bridge_ingest(
    p_fresh_tickets text[], p_fresh_revisions integer[], p_fresh_prints text[],
    p_fresh_first double precision[], p_fresh_updated double precision[],
    p_moved_tickets text[], p_moved_revisions integer[], p_moved_prints text[],
    p_moved_updated double precision[], p_moved_prev integer[],
    p_ids text[], p_types text[], p_created double precision[],
    p_event_at double precision[], p_bodies text[],
    p_delivery_of text[], p_delivery_target text[], p_delivery_due double precision[],
    p_delivery_now double precision,
    p_cursor_job text, p_cursor_value double precision, p_cursor_at double precision,
    p_fence_holder text, p_fence_epoch bigint,
    p_channel text, p_notify text, p_durable boolean
) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_rows integer;
BEGIN
    IF NOT p_durable THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;

    IF cardinality(p_fresh_tickets) > 0 THEN
        INSERT INTO seen_tickets (ticket, revision, fingerprint, first_seen_at, updated_at)
        SELECT * FROM unnest(p_fresh_tickets, p_fresh_revisions, p_fresh_prints,
                             p_fresh_first, p_fresh_updated)
        ON CONFLICT (ticket) DO NOTHING;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        IF v_rows <> cardinality(p_fresh_tickets) THEN
            RAISE EXCEPTION 'a ticket was inserted by another writer' USING ERRCODE = 'FB001';
        END IF;
    END IF;

    IF cardinality(p_moved_tickets) > 0 THEN
        UPDATE seen_tickets AS s
        SET revision = u.revision, fingerprint = u.fingerprint, updated_at = u.updated_at
        FROM unnest(p_moved_tickets, p_moved_revisions, p_moved_prints, p_moved_updated,
                    p_moved_prev) AS u (ticket, revision, fingerprint, updated_at, prev)
        WHERE s.ticket = u.ticket AND s.revision = u.prev;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        IF v_rows <> cardinality(p_moved_tickets) THEN
            RAISE EXCEPTION 'a ticket''s revision was moved by another writer'
                USING ERRCODE = 'FB001';
        END IF;
    END IF;

    IF cardinality(p_ids) > 0 THEN
        INSERT INTO notifications (id, type, created_at, event_at, body)
        SELECT * FROM unnest(p_ids, p_types, p_created, p_event_at, p_bodies);
    END IF;

    -- WITH ORDINALITY + ORDER BY: identity ids follow the items' order (creation order).
    IF cardinality(p_delivery_of) > 0 THEN
        INSERT INTO deliveries (notification_id, target, state, attempts, next_attempt_at,
                                created_at, updated_at)
        SELECT u.n, u.t, 'pending', 0, u.due, p_delivery_now, p_delivery_now
        FROM unnest(p_delivery_of, p_delivery_target, p_delivery_due)
             WITH ORDINALITY AS u (n, t, due, o)
        ORDER BY u.o;
    END IF;

    IF p_cursor_job IS NOT NULL THEN
        IF p_fence_holder IS NOT NULL THEN
            -- FOR SHARE: a takeover waits for this transaction, so the cursor never
            -- moves after another replica became the leader.
            PERFORM 1 FROM poll_lease AS l
            WHERE l.name = 'poll' AND l.holder = p_fence_holder AND l.epoch = p_fence_epoch
              AND l.expires_at >= extract(epoch FROM clock_timestamp())::float8
            FOR SHARE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'cursor %: the poll lease % is not live',
                    p_cursor_job, p_fence_epoch USING ERRCODE = 'FB002';
            END IF;
        END IF;
        INSERT INTO cursors (job, value, updated_at)
        VALUES (p_cursor_job, p_cursor_value, p_cursor_at)
        ON CONFLICT (job) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at;
    END IF;

    IF p_notify IS NOT NULL THEN
        PERFORM pg_notify(p_channel, p_notify);
    END IF;
END
$$;

-- 2. Queue plans that do not depend on statistics.
--
-- The planner's picture of `deliveries` comes from the last ANALYZE, which usually
-- saw almost every row delivered. During a backlog (a new database, or a burst after
-- an outage, until autovacuum analyzes again) it still believes the open rows are a
-- handful, and planned each claim as a bitmap scan of every open row plus a sort:
-- 10 to 27 ms a claim at 30,000 open rows, where walking the queue index in id order
-- up to the limit takes well under a millisecond. Without bitmap scans the claim
-- walks the index, and outcomes are matched by primary key.
ALTER FUNCTION fleet_bridge_claim_due(
    text, double precision, double precision, text, integer, integer, boolean
) SET enable_bitmapscan = off;
ALTER FUNCTION fleet_bridge_claim(
    text, double precision, double precision, text, integer, integer, boolean
) SET enable_bitmapscan = off;
ALTER FUNCTION fleet_bridge_claim_share(
    bigint[], text[], integer[], integer[], text[], double precision[], text[],
    text, double precision, double precision, text, integer, integer, text, integer, integer
) SET enable_bitmapscan = off;

-- Outcomes written on their own (not with a claim): the same plan, by primary key.
CREATE FUNCTION fleet_bridge_record_outcomes(
    p_ids bigint[], p_states text[], p_attempts integer[], p_statuses integer[],
    p_errors text[], p_next double precision[], p_claims text[], p_now double precision
) RETURNS integer LANGUAGE plpgsql VOLATILE SET enable_bitmapscan = off AS $$
DECLARE
    v_rows integer;
BEGIN
    UPDATE deliveries AS d
    SET state = u.state, attempts = u.attempts, last_status = u.status,
        last_error = u.error, next_attempt_at = u.next, lease_until = NULL,
        claim_token = NULL, updated_at = p_now
    FROM unnest(p_ids, p_states, p_attempts, p_statuses, p_errors, p_next, p_claims)
         AS u (id, state, attempts, status, error, next, claim)
    WHERE d.id = u.id AND d.state = 'in_flight'
      AND (u.claim IS NULL OR (d.claim_token = u.claim AND d.lease_until >= p_now));
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;
