-- 005: one-time enrollment passwords (EST HTTP Basic authentication of an
-- enrollee).  Only the Argon2id hash of each password is stored; the
-- password itself is shown once to the administrator or certificate manager
-- who created it.  A password names the subject and the profile it may
-- enroll for, expires, and is consumed by the transaction that issues the
-- certificate (esc_enroll_issue), so it works once.
--
-- Archive records get no profile column: a record of a certificate this CA
-- issued joins certificates on its serial (archive_records.cert_serial =
-- certificates.serial AND NOT foreign_issuer), and certificates.profile
-- already says under which profile it was issued; imported records have no
-- profile.

CREATE TABLE enrollment_passwords (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^enroll-[0-9a-f]{8,32}$'),  -- the HTTP Basic user name
    hash        text NOT NULL CHECK (hash LIKE '$argon2id$%'),
    subject     text NOT NULL CHECK (length(subject) BETWEEN 1 AND 511),        -- RFC 2253
    profile     text NOT NULL CHECK (profile ~ '^[a-z0-9-]{1,31}$'),
    created_by  bigint NOT NULL REFERENCES accounts (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    CHECK (expires_at > created_at AND expires_at <= created_at + interval '720 hours'),
    CHECK (used_at IS NULL OR used_at >= created_at)
);
CREATE INDEX enrollment_passwords_expires_idx ON enrollment_passwords (expires_at);

-- Single use in the database too: a row is only ever updated to mark it
-- used, once; nothing else about it changes.  (Deleting expired rows is fine.)
CREATE FUNCTION enrollment_password_used_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.used_at IS NOT NULL OR NEW.used_at IS NULL
       OR (NEW.id, NEW.name, NEW.hash, NEW.subject, NEW.profile, NEW.created_by, NEW.created_at, NEW.expires_at)
          IS DISTINCT FROM
          (OLD.id, OLD.name, OLD.hash, OLD.subject, OLD.profile, OLD.created_by, OLD.created_at, OLD.expires_at)
    THEN
        RAISE EXCEPTION 'a one-time enrollment password can only be marked used, once'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER enrollment_password_used_once BEFORE UPDATE ON enrollment_passwords
    FOR EACH ROW EXECUTE FUNCTION enrollment_password_used_once();
