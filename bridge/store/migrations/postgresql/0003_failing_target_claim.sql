-- A failing target (probe_at set, SPEC §4) gives out no ordinary claims on any
-- replica: only the probe goes, claimed under the target's row lock by
-- claim_probe. The claim of migration 0002 is kept as it is, behind this check.
ALTER FUNCTION fleet_bridge_claim(
    text, double precision, double precision, text, integer, integer, boolean
) RENAME TO fleet_bridge_claim_due;

CREATE FUNCTION fleet_bridge_claim(
    p_target text, p_now double precision, p_lease double precision, p_token text,
    p_limit integer, p_max_in_flight integer, p_fifo boolean
) RETURNS TABLE (
    id bigint, notification_id text, type text, target text, body text,
    attempts integer, created_at double precision, event_at double precision
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM target_state AS s
               WHERE s.target = p_target AND s.probe_at IS NOT NULL) THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM fleet_bridge_claim_due(
        p_target, p_now, p_lease, p_token, p_limit, p_max_in_flight, p_fifo);
END
$$;
