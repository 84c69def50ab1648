-- 014: k-of-n KRA threshold (docs/archival.md, "Record version 2").
--
-- kra_threshold (k): how many KRAs of a record's set must take part to
-- recover it.  1: any one KRA recovers, the record is version 1, as
-- always.  k > 1: the record is version 2, its key encrypted under a
-- random KEK that is split with Shamir's scheme into kra_set_size shares,
-- one sealed to each KRA of the set.  1 <= k <= kra_set_size; the library
-- refuses a change that breaks it, naming both values (policy.c).
ALTER TABLE policy DROP CONSTRAINT policy_key_check;
ALTER TABLE policy ADD CONSTRAINT policy_key_check CHECK (key IN (
    'kra_set_size', 'allow_foreign_issuers', 'recovery_approvals', 'revoke_before_recovery',
    'one_key_per_subject', 'release_ttl_hours', 'cert_login_roles',
    'kra_min_rsa_bits', 'kra_min_ec_bits', 'kra_allow_rsa_pkcs1v15', 'kra_threshold'));
ALTER TABLE policy ADD CONSTRAINT policy_kra_threshold_check CHECK (
    key <> 'kra_threshold' OR value ~ '^([1-9]|1[0-6])$');
INSERT INTO policy (key, value) VALUES ('kra_threshold', '1');

-- ---- k-of-n recovery (docs/recovery.md, "k of n"): the shares of a
-- released version 2 record, one row per KRA of its set.  Release copies
-- each KRA's sealed share out of the record (ciphertext to that KRA's card);
-- a contributing KRA opens its own on its card and stores it re-sealed to
-- the completing KRA (the one the request names).  The service never holds
-- a share in clear.  The shares stay only while the request is released:
-- sealed and contributed are cleared (NULL) when it completes, ends or
-- expires; who contributed when stays.  The service deletes nothing.
CREATE TABLE recovery_shares (
    request_id      bigint NOT NULL REFERENCES recovery_requests (id),
    kra_id          bigint NOT NULL REFERENCES kras (id),
    x               integer NOT NULL CHECK (x BETWEEN 1 AND 255),
    threshold       integer NOT NULL CHECK (threshold BETWEEN 2 AND 16),
    commitment      bytea NOT NULL CHECK (length(commitment) = 32),
    sealed          bytea,                   -- the share sealed to kra_id's card, from the record
    contributed     bytea,                   -- the share re-sealed to the request's KRA by kra_id
    contributed_by  bigint REFERENCES accounts (id),
    contributed_at  timestamptz,
    PRIMARY KEY (request_id, kra_id),
    UNIQUE (request_id, x),
    CHECK ((contributed_by IS NULL) = (contributed_at IS NULL)),
    CHECK (contributed IS NULL OR contributed_by IS NOT NULL)
);

-- ---- The service's role: policy as before (read only, 006's grant);
-- recovery_shares written at release, contribution and completion.  As in
-- 012, the earlier function is kept under another name and called first.
ALTER FUNCTION p11escrow_grant_service(text) RENAME TO p11escrow_grant_service_prev_014;

CREATE FUNCTION p11escrow_grant_service(service text) RETURNS void
    LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
BEGIN
    PERFORM p11escrow_grant_service_prev_014(service);
    EXECUTE format('GRANT SELECT, INSERT ON recovery_shares TO %I', service);
    EXECUTE format('GRANT UPDATE (sealed, contributed, contributed_by, contributed_at) ON recovery_shares TO %I',
                   service);
END $$;
REVOKE ALL ON FUNCTION p11escrow_grant_service(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION p11escrow_grant_service_prev_014(text) FROM PUBLIC;

SELECT p11escrow_regrant_services();
