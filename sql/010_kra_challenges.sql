-- 010: KRA enrollment through the service, with proof of possession.
--
-- An administrator at a security officer's workstation generates the KRA
-- key pair on the officer's card and sends its public key to the service
-- (POST /api/v1/kras).  Before the CA certifies that key, the card must
-- show that it holds the private half: the service seals 32 random bytes
-- to the public key and keeps a challenge row; the workstation decrypts
-- them on the card and sends them back (POST /api/v1/kras/{name}/prove).
-- Only the secret's SHA-256 is stored, so neither this table nor a copy of
-- it answers a challenge.  A challenge is answered once (used_at, whatever
-- the outcome) and within its lifetime (expires_at).  The pending KRA's
-- data is what the registration will write to kras, checked again then.
CREATE TABLE kra_challenges (
    id             bigserial PRIMARY KEY,
    secret_sha256  bytea NOT NULL CHECK (length(secret_sha256) = 32),
    name           text NOT NULL CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    key_type       text NOT NULL CHECK (key_type IN ('rsa3072', 'rsa4096', 'ec-p256', 'ec-p384')),
    recipient      text NOT NULL CHECK (recipient IN ('rsa-oaep-sha1', 'rsa-oaep-sha256', 'ecdh')),
    public_key     bytea NOT NULL,          -- SubjectPublicKeyInfo, DER, as the card gave it
    token_label    text NOT NULL,
    token_serial   text NOT NULL,
    key_uri        text NOT NULL CHECK (key_uri LIKE 'pkcs11:%' AND key_uri NOT LIKE '%pin-%'),
    days           integer NOT NULL CHECK (days BETWEEN 1 AND 36500),
    created_by     text NOT NULL,           -- the administrator's account; only they may answer
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz,
    outcome        text CHECK (outcome IN ('enrolled', 'wrong secret')),
    CHECK ((used_at IS NULL) = (outcome IS NULL)),
    CHECK (expires_at > created_at)
);
CREATE INDEX kra_challenges_pending_idx ON kra_challenges (name) WHERE used_at IS NULL;

-- ---- The service's database role, extended.
-- The service keeps challenges (insert; update only their use) and now
-- registers KRAs itself (insert into kras).  Whatever the function granted
-- before this migration it still grants: the earlier one is kept under
-- another name and called first, so a migration of another branch that
-- replaced it too keeps its grants.
ALTER FUNCTION p11escrow_grant_service(text) RENAME TO p11escrow_grant_service_prev_010;

CREATE FUNCTION p11escrow_grant_service(service text) RETURNS void
    LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
BEGIN
    -- Refusals (no such role, not the owner, a superuser) and REVOKE ALL first: there.
    PERFORM p11escrow_grant_service_prev_010(service);
    EXECUTE format('GRANT SELECT, INSERT ON kra_challenges TO %I', service);
    EXECUTE format('GRANT UPDATE (used_at, outcome) ON kra_challenges TO %I', service);
    EXECUTE format('GRANT USAGE ON SEQUENCE kra_challenges_id_seq TO %I', service);
    EXECUTE format('GRANT INSERT ON kras TO %I', service);
    EXECUTE format('GRANT USAGE ON SEQUENCE kras_id_seq TO %I', service);
END $$;
REVOKE ALL ON FUNCTION p11escrow_grant_service(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION p11escrow_grant_service_prev_010(text) FROM PUBLIC;

SELECT p11escrow_regrant_services();
