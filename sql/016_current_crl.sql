-- 016: one current CRL for the whole service (docs/operator-guide.md,
-- "Revocation and CRLs").
--
-- Every CRL the CA signs is kept here; the one with the highest number is
-- the current CRL, which every worker of every p11escrowd serves at GET /crl.
-- A new one is made (by a keeper, under an advisory lock: revoke.c) when the
-- current one is due (refresh_at, set by its maker from crl_validity and
-- crl_refresh) or stale: a revocation of this CA's certificates since it
-- was built.  Numbers only grow: the trigger below refuses a CRL whose
-- number is not above every number stored, so two daemons deciding at once
-- cannot make a client see the number go down (RFC 5280 §5.2.3).

-- Staleness: revision counts this CA's revocations.  The trigger on
-- revocations bumps it in the revoking transaction; a CRL records the
-- revision it was built from, read in the same statement (snapshot) as the
-- revocations it lists.  A revocation that commits after that read makes
-- the CRL stale, whatever the order of the two commits.
CREATE TABLE crl_state (
    ca_id       smallint PRIMARY KEY DEFAULT 1 CHECK (ca_id = 1),
    revision    bigint NOT NULL DEFAULT 0 CHECK (revision >= 0)
);
INSERT INTO crl_state (ca_id, revision) SELECT 1, count(*) FROM revocations WHERE own;

CREATE FUNCTION p11escrow_crl_stale() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
BEGIN
    UPDATE crl_state SET revision = revision + 1 WHERE ca_id = 1;
    RETURN NULL;
END $$;
CREATE TRIGGER revocations_crl_stale AFTER INSERT ON revocations
    FOR EACH ROW WHEN (NEW.own) EXECUTE FUNCTION p11escrow_crl_stale();

CREATE TABLE crls (
    ca_id        smallint NOT NULL DEFAULT 1 REFERENCES ca (id),
    number       bigint NOT NULL CHECK (number > 0),      -- the CRL's cRLNumber
    der          bytea NOT NULL,                           -- the signed CRL
    this_update  timestamptz NOT NULL,
    next_update  timestamptz NOT NULL,
    refresh_at   timestamptz NOT NULL,                     -- a new one is made from then on
    revision     bigint NOT NULL,                          -- crl_state.revision it was built from
    revoked      integer NOT NULL CHECK (revoked >= 0),    -- entries listed
    made_by      text NOT NULL,                            -- an account, or 'service'
    made_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ca_id, number),
    CHECK (this_update < next_update AND refresh_at BETWEEN this_update AND next_update)
);

CREATE FUNCTION p11escrow_crl_number_grows() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM crls WHERE ca_id = NEW.ca_id AND number >= NEW.number) THEN
        RAISE EXCEPTION 'CRL number % is not above the current CRL''s', NEW.number
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER crls_number_grows BEFORE INSERT ON crls
    FOR EACH ROW EXECUTE FUNCTION p11escrow_crl_number_grows();

-- ---- The service's role: reads both, inserts CRLs, and bumps the revision
-- (the trigger runs as the revoking role).  As in 014, the earlier function
-- is kept under another name and called first.
ALTER FUNCTION p11escrow_grant_service(text) RENAME TO p11escrow_grant_service_prev_016;

CREATE FUNCTION p11escrow_grant_service(service text) RETURNS void
    LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
BEGIN
    PERFORM p11escrow_grant_service_prev_016(service);
    EXECUTE format('GRANT SELECT, INSERT ON crls TO %I', service);
    EXECUTE format('GRANT SELECT, UPDATE (revision) ON crl_state TO %I', service);
END $$;
REVOKE ALL ON FUNCTION p11escrow_grant_service(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION p11escrow_grant_service_prev_016(text) FROM PUBLIC;

SELECT p11escrow_regrant_services();
