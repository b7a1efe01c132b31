-- In-flight slots: `max_in_flight` across replicas without a round trip per send (SPEC §9).
--
-- Before, every claimed row counted against the target's max_in_flight until its
-- outcome was stored, so a replica could claim no more rows than it could send at
-- once, and each send slot stood idle for two round trips (write the outcome, claim
-- again) between two sends. Now the cap is on sends: each replica holds a number of
-- in-flight slots of the target (`in_flight_shares.granted`, the sends it may have under way),
-- the slots of all live replicas never add up to more than max_in_flight, and claims
-- are a prefetch the cap does not count.
--
-- A replica asks for slots with each claim (it says how many sends it has under way,
-- `p_sending`, and how much work it holds, `p_queued`). It is told its `share`: the
-- sends it may start, fair among the replicas that want to send and never more than
-- what the others leave free, and the fair share (above the share while others still
-- hold more than theirs: worth asking again soon). Its row keeps max(sending, share): a replica that must
-- shrink keeps the slots of sends already under way until they end (and starts none
-- while over its share), so the sum of the rows always covers every send. A row
-- expires with the claim lease; a replica that cannot renew stops sending (as with
-- its claims), and a clean stop writes 0.
CREATE TABLE in_flight_shares (
    target  text NOT NULL,
    replica text NOT NULL,
    granted integer NOT NULL,
    wanted  integer NOT NULL,
    until   double precision NOT NULL,
    PRIMARY KEY (target, replica)
);

-- Outcomes, claim and slots in one statement and transaction. Lock order as everywhere
-- else: the target's state row first, then delivery rows.
CREATE FUNCTION fleet_bridge_claim_share(
    p_ids bigint[], p_states text[], p_attempts integer[], p_statuses integer[],
    p_errors text[], p_next double precision[], p_claims text[],
    p_target text, p_now double precision, p_lease double precision, p_token text,
    p_limit integer, p_max_in_flight integer, p_replica text, p_sending integer,
    p_queued integer
) RETURNS TABLE (
    id bigint, notification_id text, type text, target text, body text,
    attempts integer, created_at double precision, event_at double precision,
    share integer, fair integer
) LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_paused boolean;
    v_hold double precision;
    v_failing boolean;
    v_claimed integer := 0;
    v_want integer;
    v_others integer;
    v_wanting integer;
    v_share integer;
    v_fair integer;
BEGIN
    INSERT INTO target_state (target, paused, updated_at) VALUES (p_target, false, p_now)
    ON CONFLICT (target) DO NOTHING;
    SELECT s.paused, s.hold_until, s.probe_at IS NOT NULL
    INTO v_paused, v_hold, v_failing
    FROM target_state AS s WHERE s.target = p_target FOR UPDATE;

    -- Settle: only rows still in flight under the outcome's live claim.
    UPDATE deliveries AS d
    SET state = u.state, attempts = u.attempts, last_status = u.status,
        last_error = u.error, next_attempt_at = u.next, lease_until = NULL,
        claim_token = NULL, updated_at = p_now
    FROM unnest(p_ids, p_states, p_attempts, p_statuses, p_errors, p_next, p_claims)
         AS u (id, state, attempts, status, error, next, claim)
    WHERE d.id = u.id AND d.state = 'in_flight'
      AND (u.claim IS NULL OR (d.claim_token = u.claim AND d.lease_until >= p_now));

    -- Claim (a paused, held or failing target gives out nothing; its probe goes
    -- through claim_probe).
    IF p_limit > 0 AND NOT v_paused AND coalesce(v_hold, 0) <= p_now AND NOT v_failing THEN
        -- Migration 0002's claim, uncapped (the cap is on sends, below).
        RETURN QUERY
        SELECT c.*, NULL::integer, NULL::integer FROM fleet_bridge_claim_due(
            p_target, p_now, p_lease, p_token, p_limit, NULL, false) AS c;
        GET DIAGNOSTICS v_claimed = ROW_COUNT;
    END IF;

    -- Slots: a fair share among the live replicas that want to send, within what
    -- the others hold.
    v_want := least(p_max_in_flight, p_queued + v_claimed);
    SELECT coalesce(sum(t.granted), 0), count(*) FILTER (WHERE t.wanted > 0)
    INTO v_others, v_wanting
    FROM in_flight_shares AS t
    WHERE t.target = p_target AND t.replica <> p_replica AND t.until >= p_now;
    IF v_want > 0 THEN
        v_wanting := v_wanting + 1;
    END IF;
    v_fair := ceil(p_max_in_flight::numeric / greatest(v_wanting, 1))::integer;
    v_share := greatest(0, least(v_want, p_max_in_flight - v_others, v_fair));
    INSERT INTO in_flight_shares AS t (target, replica, granted, wanted, until)
    VALUES (p_target, p_replica, greatest(p_sending, v_share), v_want, p_lease)
    ON CONFLICT (target, replica) DO UPDATE
    SET granted = excluded.granted, wanted = excluded.wanted, until = excluded.until;
    DELETE FROM in_flight_shares AS t WHERE t.target = p_target AND t.until < p_now;

    RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text,
                        NULL::integer, NULL::double precision, NULL::double precision,
                        v_share, v_fair;
END
$$;
