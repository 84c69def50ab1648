-- 013: KRA certificate renewal for the same card key (issue #14).
--
-- `p11escrow kra renew NAME` (and POST /api/v1/kras/{name}/renew) issues a
-- new KRA certificate for the key the KRA already has, after the card has
-- proven again that it holds it: the same challenge as enrollment (010),
-- marked as a renewal.  The KRA row keeps its id, name, key and records;
-- its certificate, serial and fingerprint are replaced, in one transaction
-- with the audit event (which keeps the old serial).  Records wrapped
-- before keep naming the old certificate (issuer and serial) in their
-- inner CMS layer, so the certificate replaced is kept in kra_certificates:
-- recovery finds the recipient info by it and opens it with the card's
-- key, which is the same.
--
-- Note for merging: this is the next free number on its branch; renumber
-- if another 013 lands first (the file changes nothing another one does,
-- except chaining p11escrow_grant_service as 010 and 012 do).
ALTER TABLE kra_challenges ADD COLUMN renews boolean NOT NULL DEFAULT false;
ALTER TABLE kra_challenges DROP CONSTRAINT kra_challenges_outcome_check;
ALTER TABLE kra_challenges ADD CONSTRAINT kra_challenges_outcome_check CHECK (
    outcome IN ('enrolled', 'renewed', 'wrong secret'));

-- ---- Earlier certificates of a KRA (same key), replaced by renewals; never changed.
CREATE TABLE kra_certificates (
    kra_id       bigint NOT NULL REFERENCES kras (id),
    certificate  bytea NOT NULL,           -- DER, as kras.certificate was
    cert_serial  text NOT NULL UNIQUE,
    cert_sha256  text NOT NULL UNIQUE,
    replaced_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kra_id, cert_serial)
);

-- ---- The service's database role, extended: the keeper replaces a KRA's certificate.
ALTER FUNCTION p11escrow_grant_service(text) RENAME TO p11escrow_grant_service_prev_013;

CREATE FUNCTION p11escrow_grant_service(service text) RETURNS void
    LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
BEGIN
    -- Refusals (no such role, not the owner, a superuser) and REVOKE ALL first: there.
    PERFORM p11escrow_grant_service_prev_013(service);
    EXECUTE format('GRANT UPDATE (certificate, cert_serial, cert_sha256) ON kras TO %I', service);
    EXECUTE format('GRANT SELECT, INSERT ON kra_certificates TO %I', service);
END $$;
REVOKE ALL ON FUNCTION p11escrow_grant_service(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION p11escrow_grant_service_prev_013(text) FROM PUBLIC;

SELECT p11escrow_regrant_services();
