-- 003: the audit trail.  Append-only, hash-chained: each event stores the
-- SHA-256 of its own canonical encoding, which includes the previous
-- event's hash.  `p11escrow audit verify` recomputes the chain.  Never a
-- secret in any column.

CREATE TABLE audit_events (
    id         bigint PRIMARY KEY,
    at         text NOT NULL,            -- UTC, exactly as hashed
    actor      text NOT NULL,
    role       text NOT NULL,
    action     text NOT NULL,
    object     text NOT NULL,
    outcome    text NOT NULL CHECK (outcome IN ('ok', 'refused', 'failed')),
    details    text NOT NULL,
    prev_hash  bytea NOT NULL UNIQUE,    -- one successor per event: the chain cannot fork
    hash       bytea NOT NULL UNIQUE
);
CREATE SEQUENCE audit_events_id_seq OWNED BY audit_events.id;
CREATE INDEX audit_events_action_idx ON audit_events (action);
CREATE INDEX audit_events_actor_idx ON audit_events (actor);
CREATE INDEX audit_events_object_idx ON audit_events (object);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

-- The audit key: a fourth key on the CA token, signing checkpoints only.
ALTER TABLE token_keys DROP CONSTRAINT token_keys_role_check;
ALTER TABLE token_keys ADD CONSTRAINT token_keys_role_check
    CHECK (role IN ('ca-sign', 'transport', 'storage', 'audit'));

-- Checkpoints: the audit key on the CA token signs the hash of the newest
-- event, so a database edited wholesale (chain recomputed) or cut short
-- is caught by `p11escrow audit verify`.
CREATE TABLE audit_checkpoints (
    id          bigserial PRIMARY KEY,
    event_id    bigint NOT NULL,
    event_hash  bytea NOT NULL,
    at          text NOT NULL,
    signature   bytea NOT NULL
);
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
