-- 006: the service's database role, certificate managers' scopes and the
-- one-key-per-subject policy.

-- ---- Policy: at most one valid archived encryption key per subject and profile.
-- off: no check; supersede: a new enrollment revokes the older certificate
-- (reason superseded) in its own transaction; refuse: the enrollment is refused.
ALTER TABLE policy DROP CONSTRAINT policy_key_check;
ALTER TABLE policy ADD CONSTRAINT policy_key_check CHECK (key IN (
    'kra_set_size', 'allow_foreign_issuers', 'recovery_approvals', 'revoke_before_recovery',
    'one_key_per_subject'));
INSERT INTO policy (key, value) VALUES ('one_key_per_subject', 'off');

-- ---- Certificate managers' scopes.
-- An account with no row here is unscoped: it sees every record (as before
-- this migration).  With rows, a record is in scope when its profile is one
-- of the account's profiles (if it has any) AND one of the record's groups
-- is one of the account's groups (if it has any).  A record's profile is the
-- profile its certificate was issued under by this CA, or 'imported' for a
-- record without one (manual archival, foreign certificates); its groups are
-- the values of the O and OU attributes of its subject, compared without
-- regard to case.
CREATE TABLE manager_scopes (
    account_id  bigint NOT NULL REFERENCES accounts (id),
    kind        text NOT NULL CHECK (kind IN ('profile', 'group')),
    value       text NOT NULL CHECK (length(value) BETWEEN 1 AND 64),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX manager_scopes_value_idx ON manager_scopes (account_id, kind, lower(value));

-- The O and OU values of a subject as the library stores it (RFC 2253 text:
-- AVAs separated by unescaped ',' or '+', special characters escaped with a
-- backslash).  An escaped ',' inside a value never starts another AVA, so a
-- CN of "x,O=Sales" does not make its holder a member of Sales.
CREATE FUNCTION p11escrow_subject_groups(subject text) RETURNS text[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog AS $$
    SELECT coalesce(array_agg(regexp_replace(substr(m[1], strpos(m[1], '=') + 1), '\\(.)', '\1', 'g')),
                    '{}'::text[])
    FROM regexp_matches(subject, '((?:[^,+\\]|\\.)+)', 'g') AS m
    WHERE upper(split_part(m[1], '=', 1)) IN ('O', 'OU')
$$;

-- The profile a record's certificate was issued under, 'imported' if none.
CREATE FUNCTION p11escrow_record_profile(rec uuid) RETURNS text
    LANGUAGE sql STABLE SET search_path = public, pg_catalog AS $$
    SELECT coalesce((SELECT c.profile FROM archive_records a JOIN certificates c ON c.serial = a.cert_serial
                     WHERE a.id = rec AND NOT a.foreign_issuer), 'imported')
$$;

-- Is record in account's scope?  True for an unscoped account.
CREATE FUNCTION p11escrow_record_in_scope(rec uuid, acct bigint) RETURNS boolean
    LANGUAGE sql STABLE SET search_path = public, pg_catalog AS $$
    SELECT (NOT EXISTS (SELECT 1 FROM manager_scopes s WHERE s.account_id = acct AND s.kind = 'profile')
            OR EXISTS (SELECT 1 FROM manager_scopes s WHERE s.account_id = acct AND s.kind = 'profile'
                       AND s.value = p11escrow_record_profile(rec)))
       AND (NOT EXISTS (SELECT 1 FROM manager_scopes s WHERE s.account_id = acct AND s.kind = 'group')
            OR EXISTS (SELECT 1 FROM manager_scopes s, archive_records a,
                              unnest(p11escrow_subject_groups(a.subject)) AS g (name)
                       WHERE a.id = rec AND s.account_id = acct AND s.kind = 'group'
                       AND lower(s.value) = lower(g.name)))
$$;

-- ---- The service's database role.
-- p11escrowd should not connect as the owner of these tables: the owner can
-- drop the append-only triggers.  An administrator creates a login role
-- (roles are cluster-wide: CREATE ROLE p11escrowd LOGIN ...) and, as the
-- owner, runs 'p11escrow db grant-service p11escrowd', which calls this.
-- It starts from nothing on every table and sequence, then grants exactly
-- what the service does: it reads everything it serves, inserts the rows of
-- enrollment, archival, recovery, revocation (superseded) and the audit
-- trail, updates only the columns of a recovery's progress and a one-time
-- password's use — never an audit row: audit_events and audit_checkpoints
-- get INSERT and SELECT only, and their triggers remain the second line.
-- UPDATE (created_at) on kras is there because PostgreSQL requires an
-- UPDATE privilege for SELECT ... FOR SHARE (archival locks the KRAs it
-- wraps to); nothing updates that column.
-- A later migration that adds a table the service uses replaces this
-- function and ends with SELECT p11escrow_regrant_services().
CREATE TABLE p11escrow_service_roles (
    role        text PRIMARY KEY,
    granted_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION p11escrow_grant_service(service text) RETURNS void
    LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
DECLARE
    owner name := (SELECT tableowner FROM pg_tables WHERE schemaname = 'public' AND tablename = 'audit_events');
    rel record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = service) THEN
        RAISE EXCEPTION 'role "%" does not exist: create it first (CREATE ROLE "%" LOGIN ...)', service, service
            USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT pg_has_role(current_user, owner, 'USAGE') THEN
        RAISE EXCEPTION 'only the owner of the p11escrow tables (%) can grant the service its privileges', owner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF service = owner OR pg_has_role(service, owner, 'MEMBER')
       OR (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = service) THEN
        RAISE EXCEPTION 'role "%" is a superuser or owns the p11escrow tables: the service needs a role of its own, which cannot bypass the grants', service
            USING ERRCODE = 'invalid_grant_operation';
    END IF;
    FOR rel IN SELECT c.relname, c.relkind FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
               AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') LOOP
        EXECUTE format('REVOKE ALL ON %s %I FROM %I', CASE rel.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
                       rel.relname, service);
    END LOOP;
    EXECUTE format('GRANT SELECT ON ca, token_keys, certificates, policy, kras, accounts, archive_records, '
                   'archive_record_kras, recovery_requests, recovery_approvals, audit_events, audit_checkpoints, '
                   'revocations, enrollment_passwords, manager_scopes, p11escrow_schema TO %I', service);
    EXECUTE format('GRANT INSERT ON certificates, archive_records, archive_record_kras, recovery_requests, '
                   'recovery_approvals, audit_events, audit_checkpoints, revocations TO %I', service);
    EXECUTE format('GRANT UPDATE (state, package, released_at, completed_at) ON recovery_requests TO %I', service);
    EXECUTE format('GRANT UPDATE (used_at) ON enrollment_passwords TO %I', service);
    EXECUTE format('GRANT UPDATE (created_at) ON kras TO %I', service);
    EXECUTE format('GRANT USAGE ON SEQUENCE audit_events_id_seq, audit_checkpoints_id_seq, '
                   'recovery_requests_id_seq, crl_number TO %I', service);
    INSERT INTO p11escrow_service_roles (role) VALUES (service)
        ON CONFLICT (role) DO UPDATE SET granted_at = now();
END $$;
REVOKE ALL ON FUNCTION p11escrow_grant_service(text) FROM PUBLIC;

-- Grant again to every recorded service role that still exists (after a
-- migration changed what the service needs); the number of roles.
CREATE FUNCTION p11escrow_regrant_services() RETURNS integer
    LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
DECLARE
    r text;
    n integer := 0;
BEGIN
    FOR r IN SELECT s.role FROM p11escrow_service_roles s JOIN pg_roles p ON p.rolname = s.role ORDER BY 1 LOOP
        PERFORM p11escrow_grant_service(r);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
REVOKE ALL ON FUNCTION p11escrow_regrant_services() FROM PUBLIC;
