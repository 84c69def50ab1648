-- 004: revocation and CRLs; the policy that a certificate be revoked before
-- its key is recovered.

ALTER TABLE policy DROP CONSTRAINT policy_key_check;
ALTER TABLE policy ADD CONSTRAINT policy_key_check CHECK (key IN (
    'kra_set_size', 'allow_foreign_issuers', 'recovery_approvals', 'revoke_before_recovery'));
INSERT INTO policy (key, value) VALUES ('revoke_before_recovery', 'false');

-- Revoked certificates, ours (they go on the CRL) and foreign ones marked
-- revoked here (their CA publishes them; recovery policy still sees them).
CREATE TABLE revocations (
    serial      text NOT NULL CHECK (serial ~ '^[0-9a-f]+$'),
    issuer      text NOT NULL,
    own         boolean NOT NULL,        -- issued by this CA: listed on its CRL
    reason      text NOT NULL CHECK (reason IN ('unspecified', 'keyCompromise', 'affiliationChanged',
                                                'superseded', 'cessationOfOperation')),
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    revoked_by  text NOT NULL,
    PRIMARY KEY (issuer, serial)
);
CREATE SEQUENCE crl_number;
