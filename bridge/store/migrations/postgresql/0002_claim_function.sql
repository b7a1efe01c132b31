-- Claims in one round trip (SPEC §9). The claim must lock the target's row, count
-- the live claims of all replicas and then claim — three statements, each needing a
-- snapshot taken after the previous one (so the count sees claims committed while we
-- waited for the lock). PL/pgSQL gives each statement of a volatile function its own
-- snapshot under READ COMMITTED; called as one statement outside a transaction block,
-- the row lock is held until that statement commits. One round trip instead of five
-- (BEGIN, three statements, COMMIT).
CREATE FUNCTION fleet_bridge_claim(
    p_target text, p_now double precision, p_lease double precision, p_token text,
    p_limit integer, p_max_in_flight integer, p_fifo boolean
) RETURNS TABLE (
    id bigint, notification_id text, type text, target text, body text,
    attempts integer, created_at double precision, event_at double precision
) LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_paused boolean;
    v_hold double precision;
    v_live integer;
    v_limit integer := p_limit;
BEGIN
    IF p_fifo OR p_max_in_flight IS NOT NULL THEN
        -- Capped and FIFO claims of a target run one after another across replicas.
        INSERT INTO target_state (target, paused, updated_at) VALUES (p_target, false, p_now)
        ON CONFLICT (target) DO NOTHING;
        SELECT s.paused, s.hold_until INTO v_paused, v_hold
        FROM target_state AS s WHERE s.target = p_target FOR UPDATE;
    ELSE
        SELECT s.paused, s.hold_until INTO v_paused, v_hold
        FROM target_state AS s WHERE s.target = p_target;
    END IF;
    IF coalesce(v_paused, false) OR coalesce(v_hold, 0) > p_now THEN
        RETURN;
    END IF;
    IF p_max_in_flight IS NOT NULL THEN
        SELECT count(*) INTO v_live FROM deliveries AS d
        WHERE d.target = p_target AND d.state = 'in_flight' AND d.lease_until >= p_now;
        v_limit := least(v_limit, p_max_in_flight - v_live);
        IF v_limit < 1 THEN
            RETURN;
        END IF;
    END IF;
    IF p_fifo THEN
        RETURN QUERY
        WITH c AS (
            UPDATE deliveries AS d
            SET state = 'in_flight', lease_until = p_lease, claim_token = p_token,
                updated_at = p_now
            WHERE d.id = (
                SELECT o.id FROM deliveries AS o
                WHERE o.target = p_target AND o.state IN ('pending', 'in_flight')
                ORDER BY o.id LIMIT 1
            ) AND CASE d.state WHEN 'pending' THEN d.next_attempt_at <= p_now
                               ELSE d.lease_until < p_now END
            RETURNING d.id, d.notification_id, d.target, d.attempts, d.created_at
        )
        SELECT c.id, c.notification_id, n.type, c.target, n.body, c.attempts, c.created_at,
               n.event_at
        FROM c JOIN notifications AS n ON n.id = c.notification_id
        ORDER BY c.id;
    ELSE
        -- SKIP LOCKED: replicas claiming the same target at once take disjoint rows.
        RETURN QUERY
        WITH c AS (
            UPDATE deliveries AS d
            SET state = 'in_flight', lease_until = p_lease, claim_token = p_token,
                updated_at = p_now
            WHERE d.id IN (
                SELECT o.id FROM deliveries AS o
                WHERE o.target = p_target
                  AND o.state IN ('pending', 'in_flight')
                  AND CASE o.state WHEN 'pending' THEN o.next_attempt_at <= p_now
                                   ELSE o.lease_until < p_now END
                ORDER BY o.id LIMIT v_limit
                FOR UPDATE SKIP LOCKED
            )
            RETURNING d.id, d.notification_id, d.target, d.attempts, d.created_at
        )
        SELECT c.id, c.notification_id, n.type, c.target, n.body, c.attempts, c.created_at,
               n.event_at
        FROM c JOIN notifications AS n ON n.id = c.notification_id
        ORDER BY c.id;
    END IF;
END
$$;
