-- 007: recovery requests that end — denied or cancelled by a person, or
-- expired when a released package was not completed in time.

-- ---- Policy: hours a released package waits for its KRA (1..720, whole hours).
ALTER TABLE policy DROP CONSTRAINT policy_key_check;
ALTER TABLE policy ADD CONSTRAINT policy_key_check CHECK (key IN (
    'kra_set_size', 'allow_foreign_issuers', 'recovery_approvals', 'revoke_before_recovery',
    'one_key_per_subject', 'release_ttl_hours'));
-- The library validates every policy value; this one is also read by SQL
-- (value::int), so the database keeps it a number the cast accepts.
ALTER TABLE policy ADD CONSTRAINT policy_release_ttl_check CHECK (
    key <> 'release_ttl_hours' OR value ~ '^([1-9]|[1-9][0-9]|[1-6][0-9][0-9]|70[0-9]|71[0-9]|720)$');
INSERT INTO policy (key, value) VALUES ('release_ttl_hours', '24');

-- ---- How a request ended, if it did not complete.
-- denied: a certificate manager or an administrator refused it (pending or
-- approved); cancelled: its requester or an administrator withdrew it
-- (pending, approved or released); expired: released, not completed within
-- release_ttl_hours.  ended_by is an account name, or 'service' for expiry
-- by p11escrowd.  A package exists only while a request is released: the
-- CHECK of 002 stays, so ending a released request deletes its package.
ALTER TABLE recovery_requests DROP CONSTRAINT recovery_requests_state_check;
ALTER TABLE recovery_requests ADD CONSTRAINT recovery_requests_state_check CHECK (
    state IN ('pending', 'approved', 'released', 'completed', 'denied', 'cancelled', 'expired'));
ALTER TABLE recovery_requests
    ADD COLUMN ended_at   timestamptz,
    ADD COLUMN ended_by   text CHECK (length(ended_by) BETWEEN 1 AND 64),
    ADD COLUMN end_reason text CHECK (length(end_reason) BETWEEN 3 AND 1000);
-- Nothing set 'denied' before this migration; should a row have it anyway, it gets an end.
UPDATE recovery_requests SET ended_at = coalesce(completed_at, released_at, created_at), ended_by = 'unknown',
       end_reason = 'denied before the schema recorded why'
 WHERE state = 'denied';
ALTER TABLE recovery_requests ADD CONSTRAINT recovery_requests_end_check CHECK (
    (state IN ('denied', 'cancelled', 'expired'))
    = (ended_at IS NOT NULL AND ended_by IS NOT NULL AND end_reason IS NOT NULL));
-- Expiry needs the release time.
ALTER TABLE recovery_requests ADD CONSTRAINT recovery_requests_released_at_check CHECK (
    state <> 'released' OR released_at IS NOT NULL);
-- The expiry sweep looks only at released requests.
CREATE INDEX recovery_requests_released_idx ON recovery_requests (released_at) WHERE state = 'released';

-- ---- The service ends requests too: it may write the three new columns.
-- As 006 says, a migration that changes what the service needs replaces
-- p11escrow_grant_service and regrants; this one differs from 006's only in
-- the UPDATE columns of recovery_requests.
CREATE OR REPLACE FUNCTION p11escrow_grant_service(service text) RETURNS void
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
    EXECUTE format('GRANT UPDATE (state, package, released_at, completed_at, ended_at, ended_by, end_reason) '
                   'ON recovery_requests TO %I', service);
    EXECUTE format('GRANT UPDATE (used_at) ON enrollment_passwords TO %I', service);
    EXECUTE format('GRANT UPDATE (created_at) ON kras TO %I', service);
    EXECUTE format('GRANT USAGE ON SEQUENCE audit_events_id_seq, audit_checkpoints_id_seq, '
                   'recovery_requests_id_seq, crl_number TO %I', service);
    INSERT INTO p11escrow_service_roles (role) VALUES (service)
        ON CONFLICT (role) DO UPDATE SET granted_at = now();
END $$;
REVOKE ALL ON FUNCTION p11escrow_grant_service(text) FROM PUBLIC;
SELECT p11escrow_regrant_services();
