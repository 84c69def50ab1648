-- 017: re-wrap of the KRA layer through the service (docs/archival.md,
-- "Re-wrapping through the service"; docs/api.md, /rewrap/kra/...).
--
-- `p11escrow rewrap --kra --server URL` re-wraps records at an officer's
-- workstation that holds the KRA cards: the service offers a batch (the
-- keeper opens each record's outer layer; the inner layer, still sealed to
-- the KRA cards, goes to the workstation with the new KRA set the service
-- chose), the workstation re-seals the inner layer to that set and posts it
-- back, and the service checks it, seals the outer layer to the current
-- storage key and replaces the row.
--
-- Until now the service's role could update a record only to re-seal it
-- between storage generations (012's trigger archive_records_reseal_only,
-- and grants on the two columns that changes).  Re-wrapping replaces the
-- record, its record_version and wrap_version and its archive_record_kras
-- rows too.  The service's role gets no new column grant and no DELETE:
-- it calls p11escrow_rewrap_kra, which runs as the tables' owner and does
-- one thing only — replace a record the service offered for re-wrap, with
-- the set and threshold of that offer, and only while the record is still
-- the one offered (its SHA-256 unchanged).  See docs/threat-model.md for
-- what a compromised service role can now do (replace a record's bytes,
-- i.e. destroy it) and why it still cannot read a key.

-- ---- The offers: which set and threshold the service chose for a record,
-- and the record's hash when it was offered.  Short-lived: a commit deletes
-- its offer, the next batch replaces a stale one (an offer whose record
-- changed since is never used: the hash no longer matches).  No secret in it.
CREATE TABLE rewrap_offers (
    record_id      uuid PRIMARY KEY REFERENCES archive_records (id) ON DELETE CASCADE,
    record_sha256  bytea NOT NULL CHECK (length(record_sha256) = 32),
    kra_ids        bigint[] NOT NULL CHECK (cardinality(kra_ids) BETWEEN 1 AND 16),
    threshold      integer NOT NULL CHECK (threshold BETWEEN 1 AND 16),
    offered_by     bigint NOT NULL REFERENCES accounts (id),
    offered_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (threshold <= cardinality(kra_ids))
);

-- ---- Replace record rid's KRA layer as its offer says.  false: the record
-- is no longer the one offered (changed or gone) or has no offer — the
-- caller leaves it for the next batch.  Refused (insufficient_privilege):
-- an offer whose set or threshold is not what current policy allows, or a
-- record sealed to another storage generation than the current one.
CREATE FUNCTION p11escrow_rewrap_kra(rid uuid, old_sha bytea, new_record bytea, gen integer) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_catalog AS $$
DECLARE
    o rewrap_offers%ROWTYPE;
    cur integer := (SELECT generation FROM token_keys WHERE role = 'storage');
    want_n integer := (SELECT value::integer FROM policy WHERE key = 'kra_set_size');
    want_k integer := (SELECT value::integer FROM policy WHERE key = 'kra_threshold');
    active integer;
BEGIN
    IF gen IS DISTINCT FROM cur THEN
        RAISE EXCEPTION 'a re-wrapped record is sealed to the current storage key generation (%)', cur
            USING ERRCODE = 'serialization_failure';
    END IF;
    IF new_record IS NULL OR length(new_record) < 64 THEN
        RAISE EXCEPTION 'a re-wrapped record is a sealed record' USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM 1 FROM archive_records WHERE id = rid AND sha256(record) = old_sha FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    SELECT * INTO o FROM rewrap_offers WHERE record_id = rid AND record_sha256 = old_sha FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- Every KRA of the set active (and kept so until commit), distinct, as many as policy says.
    SELECT count(*) INTO active FROM (SELECT id FROM kras WHERE id = ANY (o.kra_ids) AND state = 'active'
                                      FOR SHARE) s;
    IF o.threshold IS DISTINCT FROM want_k OR cardinality(o.kra_ids) IS DISTINCT FROM want_n
       OR active <> cardinality(o.kra_ids) THEN
        RAISE EXCEPTION 'the KRA set offered for record % is not one current policy allows', rid
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE archive_records SET record = new_record, storage_generation = gen,
        record_version = CASE WHEN o.threshold > 1 THEN 2 ELSE 1 END, wrap_version = o.threshold
        WHERE id = rid;
    DELETE FROM archive_record_kras WHERE record_id = rid;
    INSERT INTO archive_record_kras (record_id, kra_id, recipient)
        SELECT rid, k.id, k.recipient FROM kras k WHERE k.id = ANY (o.kra_ids);
    DELETE FROM rewrap_offers WHERE record_id = rid;
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION p11escrow_rewrap_kra(uuid, bytea, bytea, integer) FROM PUBLIC;

-- ---- The service's role: the offers, and the one function above.
ALTER FUNCTION p11escrow_grant_service(text) RENAME TO p11escrow_grant_service_prev_017;

CREATE FUNCTION p11escrow_grant_service(service text) RETURNS void
    LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
BEGIN
    PERFORM p11escrow_grant_service_prev_017(service);
    -- No DELETE, as everywhere (the service deletes nothing): a committed offer is deleted by
    -- p11escrow_rewrap_kra, a stale one replaced when its record is offered again.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON rewrap_offers TO %I', service);
    EXECUTE format('GRANT EXECUTE ON FUNCTION p11escrow_rewrap_kra(uuid, bytea, bytea, integer) TO %I', service);
END $$;
REVOKE ALL ON FUNCTION p11escrow_grant_service(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION p11escrow_grant_service_prev_017(text) FROM PUBLIC;

SELECT p11escrow_regrant_services();
