-- 012: storage key generations (docs/archival.md, "Storage key generations").
--
-- Every archive record's outer layer is sealed to the storage key, a
-- decryption key on the CA token.  `p11escrow storage-key rotate` makes a
-- new one: token_keys' 'storage' row stays the *current* storage key (the
-- one new records are sealed to), and the key it replaces moves, in the
-- same transaction, to retired_storage_keys.  Each record says which
-- generation its outer layer is sealed to, so recovery opens it with that
-- generation's key, and `p11escrow rewrap --storage` re-seals every record
-- of an earlier generation to the current key, batch by batch.

-- ---- The current generation: authoritative on token_keys' 'storage' row (1 for the other roles).
ALTER TABLE token_keys ADD COLUMN generation integer NOT NULL DEFAULT 1 CHECK (generation >= 1);
ALTER TABLE token_keys ADD CONSTRAINT token_keys_generation_role_check CHECK (role = 'storage' OR generation = 1);

-- ---- Earlier storage keys: kept for the records still sealed to them.  Key
-- references and public data only, as token_keys: no PIN, no private key.
CREATE TABLE retired_storage_keys (
    generation    integer PRIMARY KEY CHECK (generation >= 1),
    token_label   text NOT NULL,
    token_serial  text NOT NULL,
    key_id        bytea NOT NULL,
    key_label     text NOT NULL,
    key_type      text NOT NULL,
    uri           text NOT NULL CHECK (uri LIKE 'pkcs11:%' AND uri NOT LIKE '%pin-%'),
    public_key    bytea NOT NULL,        -- SubjectPublicKeyInfo DER
    certificate   bytea NOT NULL,        -- DER: records of this generation are sealed to it
    generated     boolean NOT NULL,
    created_at    timestamptz NOT NULL,  -- when the key became current
    retired_at    timestamptz NOT NULL DEFAULT now(),
    retired_by    text NOT NULL          -- the administrator who rotated
);

-- ---- Each record's generation (every record so far: the first key's).
ALTER TABLE archive_records ADD COLUMN storage_generation integer NOT NULL DEFAULT 1
    CHECK (storage_generation >= 1);
-- The re-seal job walks the records of earlier generations in id order.
CREATE INDEX archive_records_storage_generation_idx ON archive_records (storage_generation, id);

-- A new record is sealed to the current generation, never to a retired one.
-- An archival that read the storage certificate before a rotation committed
-- and inserts after it is refused with serialization_failure, which the
-- library retries (it then reads the new certificate).  The rotation takes
-- a SHARE lock on archive_records before it commits, so an insert either
-- commits before the rotation or runs this check after it: no record is
-- ever committed under a generation that was already retired.
CREATE FUNCTION archive_records_generation_current() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
BEGIN
    IF NEW.storage_generation IS DISTINCT FROM (SELECT generation FROM token_keys WHERE role = 'storage') THEN
        RAISE EXCEPTION 'archive record sealed to storage key generation %, which is not the current one',
            NEW.storage_generation USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER archive_records_generation_current BEFORE INSERT ON archive_records
    FOR EACH ROW EXECUTE FUNCTION archive_records_generation_current();

-- A role other than the tables' owner (the service's) may update a record
-- only to re-seal it: from an earlier generation to the current one, and
-- its grants (below) name only the two columns that re-sealing changes.
-- So a compromised worker cannot move a record back to a retired key or
-- rewrite a current one.  The owner is not bound: it could drop the
-- trigger anyway (operators' repairs, tests that tamper on purpose).
CREATE FUNCTION archive_records_reseal_only() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
DECLARE
    cur integer := (SELECT generation FROM token_keys WHERE role = 'storage');
BEGIN
    IF pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'USAGE') THEN
        RETURN NEW;
    END IF;
    IF NEW.storage_generation IS DISTINCT FROM cur OR OLD.storage_generation >= cur THEN
        RAISE EXCEPTION 'an archive record is only ever re-sealed from an earlier storage key generation to the current one (%)', cur
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER archive_records_reseal_only BEFORE UPDATE ON archive_records
    FOR EACH ROW EXECUTE FUNCTION archive_records_reseal_only();

-- ---- The service's database role, extended.
-- p11escrowd's keeper re-seals records (POST /api/v1/storage-keys/reseal):
-- it reads the retired keys and updates a record's outer layer and
-- generation.  Rotation itself is not the service's: it changes which key
-- every new record is sealed to, so only the tables' owner may do it (the
-- CLI on the service host, `storage-key rotate --local`), never the role a
-- network-facing worker holds.  As in 010, the earlier function is kept
-- under another name and called first.
ALTER FUNCTION p11escrow_grant_service(text) RENAME TO p11escrow_grant_service_prev_012;

CREATE FUNCTION p11escrow_grant_service(service text) RETURNS void
    LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
BEGIN
    -- Refusals (no such role, not the owner, a superuser) and REVOKE ALL first: there.
    PERFORM p11escrow_grant_service_prev_012(service);
    EXECUTE format('GRANT SELECT ON retired_storage_keys TO %I', service);
    EXECUTE format('GRANT UPDATE (record, storage_generation) ON archive_records TO %I', service);
END $$;
REVOKE ALL ON FUNCTION p11escrow_grant_service(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION p11escrow_grant_service_prev_012(text) FROM PUBLIC;

SELECT p11escrow_regrant_services();
