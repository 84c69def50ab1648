-- 002: key recovery agents, accounts and roles, policy, archive records,
-- recovery requests.  Only ciphertext and public data: no private key, PIN,
-- password or content-encryption key is ever stored here.

CREATE TABLE policy (
    key         text PRIMARY KEY CHECK (key IN ('kra_set_size', 'allow_foreign_issuers', 'recovery_approvals')),
    value       text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text
);
INSERT INTO policy (key, value) VALUES
    ('kra_set_size', '1'),             -- each record is wrapped to N of the active KRAs
    ('allow_foreign_issuers', 'false'),-- import certificates of other CAs
    ('recovery_approvals', '0');       -- approvals needed beyond the request itself

CREATE TABLE kras (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    state         text NOT NULL CHECK (state IN ('active', 'retired')),
    certificate   bytea NOT NULL,          -- DER, issued by our CA, EKU Key Recovery Agent
    cert_serial   text NOT NULL UNIQUE,
    cert_sha256   text NOT NULL UNIQUE,
    key_type      text NOT NULL,
    recipient     text NOT NULL CHECK (recipient IN ('rsa-oaep-sha1', 'rsa-oaep-sha256', 'ecdh')),
    token_label   text NOT NULL,
    token_serial  text NOT NULL,
    key_uri       text NOT NULL CHECK (key_uri LIKE 'pkcs11:%' AND key_uri NOT LIKE '%pin-%'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    retired_at    timestamptz,
    CHECK ((state = 'retired') = (retired_at IS NOT NULL))
);

-- One identity holds at most one of administrator, certificate manager and
-- KRA (DESIGN §3): in particular a certificate manager is never a KRA.
CREATE TABLE accounts (
    id             bigserial PRIMARY KEY,
    name           text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    roles          text[] NOT NULL CHECK (
                       cardinality(roles) > 0
                       AND roles <@ ARRAY['admin', 'cert-manager', 'kra', 'auditor']
                       AND ('admin' = ANY (roles))::int + ('cert-manager' = ANY (roles))::int
                           + ('kra' = ANY (roles))::int <= 1),
    password_hash  text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    kra_id         bigint UNIQUE REFERENCES kras (id),
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (('kra' = ANY (roles)) = (kra_id IS NOT NULL))
);

CREATE TABLE archive_records (
    id                 uuid PRIMARY KEY,
    record_version     integer NOT NULL DEFAULT 1,
    wrap_version       integer NOT NULL DEFAULT 1,
    cert_serial        text NOT NULL,
    issuer             text NOT NULL,
    subject            text NOT NULL,
    email              text,
    cert_sha256        text NOT NULL UNIQUE,
    public_key_sha256  text NOT NULL UNIQUE,    -- a key is archived once
    key_type           text NOT NULL,
    certificate        bytea NOT NULL,
    foreign_issuer     boolean NOT NULL,
    source             text NOT NULL CHECK (source IN ('import', 'enroll-client', 'enroll-server')),
    record             bytea NOT NULL,          -- outer AuthEnvelopedData to the storage key
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX archive_records_serial_idx ON archive_records (cert_serial);
CREATE INDEX archive_records_subject_idx ON archive_records (subject);
CREATE INDEX archive_records_email_idx ON archive_records (email);

-- The KRA set of each record: any one of them can recover it.
CREATE TABLE archive_record_kras (
    record_id  uuid NOT NULL REFERENCES archive_records (id) ON DELETE CASCADE,
    kra_id     bigint NOT NULL REFERENCES kras (id),
    recipient  text NOT NULL,
    PRIMARY KEY (record_id, kra_id)
);

CREATE TABLE recovery_requests (
    id                  bigserial PRIMARY KEY,
    record_id           uuid NOT NULL REFERENCES archive_records (id),
    requested_by        bigint NOT NULL REFERENCES accounts (id),
    reason              text NOT NULL CHECK (length(reason) BETWEEN 3 AND 1000),
    kra_id              bigint NOT NULL REFERENCES kras (id),
    state               text NOT NULL CHECK (state IN ('pending', 'approved', 'released', 'completed', 'denied')),
    approvals_required  integer NOT NULL CHECK (approvals_required >= 0),
    package             bytea,                  -- the inner envelope, only while released
    created_at          timestamptz NOT NULL DEFAULT now(),
    released_at         timestamptz,
    completed_at        timestamptz,
    CHECK ((package IS NOT NULL) = (state = 'released'))
);

CREATE TABLE recovery_approvals (
    request_id  bigint NOT NULL REFERENCES recovery_requests (id),
    approver    bigint NOT NULL REFERENCES accounts (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, approver)
);

-- Dual control in the database too: a requester never approves their own request.
CREATE FUNCTION recovery_approval_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.approver = (SELECT requested_by FROM recovery_requests WHERE id = NEW.request_id) THEN
        RAISE EXCEPTION 'a requester cannot approve their own recovery request' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER recovery_approval_check BEFORE INSERT OR UPDATE ON recovery_approvals
    FOR EACH ROW EXECUTE FUNCTION recovery_approval_check();
