-- 009: TLS client certificates bound to accounts (docs/accounts.md,
-- "Client certificates"), and the policy that some roles log in to the
-- service with one only.
--
-- A binding names one certificate by the SHA-256 of its DER encoding: the
-- very certificate an administrator bound, not another with its subject or
-- serial.  Issuer and serial (in the text forms of certificates and
-- revocations) are kept for display and for the revocation check; the DER
-- for an operator who wants to see what was bound.  One certificate stands
-- for one account; an account may have several.  Public data only.
CREATE TABLE account_certs (
    id          bigserial PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts (id),
    sha256      text NOT NULL UNIQUE CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    issuer      text NOT NULL,
    serial      text NOT NULL CHECK (serial ~ '^[0-9a-f]+$'),
    subject     text NOT NULL,
    not_after   timestamptz NOT NULL,
    der         bytea NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    added_by    text NOT NULL
);
CREATE INDEX account_certs_account_idx ON account_certs (account_id);

-- A session opened with a client certificate ends when that certificate is
-- unbound or revoked (checked at every use, like a disabled account).
ALTER TABLE sessions ADD COLUMN cert_sha256 text CHECK (cert_sha256 ~ '^[0-9a-f]{64}$');
ALTER TABLE sessions DROP CONSTRAINT sessions_end_reason_check;
ALTER TABLE sessions ADD CONSTRAINT sessions_end_reason_check CHECK (end_reason IN (
    'logout', 'idle', 'lifetime', 'account disabled', 'password changed', 'certificate removed',
    'certificate revoked'));

-- ---- Policy: roles whose accounts log in to the service with a client certificate only.
ALTER TABLE policy DROP CONSTRAINT policy_key_check;
ALTER TABLE policy ADD CONSTRAINT policy_key_check CHECK (key IN (
    'kra_set_size', 'allow_foreign_issuers', 'recovery_approvals', 'revoke_before_recovery',
    'one_key_per_subject', 'release_ttl_hours', 'cert_login_roles'));
-- Empty, or a comma-separated list of distinct role names (the library checks the rest).
ALTER TABLE policy ADD CONSTRAINT policy_cert_login_roles_check CHECK (
    key <> 'cert_login_roles' OR value ~ '^((admin|cert-manager|kra|auditor)(,(admin|cert-manager|kra|auditor))*)?$');
INSERT INTO policy (key, value) VALUES ('cert_login_roles', '');

-- ---- The service's database role, extended: it reads bindings (to log
-- accounts in) and records a session's certificate.  Binding and unbinding
-- stay with administrators.  Earlier grants are kept as 008 kept 007's.
ALTER FUNCTION p11escrow_grant_service(text) RENAME TO p11escrow_grant_service_008;

CREATE FUNCTION p11escrow_grant_service(service text) RETURNS void
    LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
BEGIN
    PERFORM p11escrow_grant_service_008(service);
    EXECUTE format('GRANT SELECT ON account_certs TO %I', service);
END $$;
REVOKE ALL ON FUNCTION p11escrow_grant_service(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION p11escrow_grant_service_008(text) FROM PUBLIC;

SELECT p11escrow_regrant_services();
