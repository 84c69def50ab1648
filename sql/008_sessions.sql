-- 008: login sessions of the JSON API, and passwords an administrator reset.
--
-- A session stands for one account between a login (POST /api/v1/session,
-- with the account's password) and its end.  Its token is 32 random bytes
-- the client holds; only the token's SHA-256 is stored, so neither this
-- table nor a copy of it lets anyone use a session.  The account is read
-- again on every use: a session confers no role of its own.
CREATE TABLE sessions (
    id              bigserial PRIMARY KEY,
    token_hash      bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),  -- SHA-256 of the token
    account_id      bigint NOT NULL REFERENCES accounts (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    ended_at        timestamptz,
    end_reason      text CHECK (end_reason IN ('logout', 'idle', 'lifetime', 'account disabled',
                                               'password changed')),
    CHECK ((ended_at IS NULL) = (end_reason IS NULL)),
    CHECK (expires_at > created_at)
);
CREATE INDEX sessions_account_idx ON sessions (account_id) WHERE ended_at IS NULL;

-- password_changed_at: sessions opened before it are over (checked at every
-- use, besides being ended in the transaction of the change).
-- must_change_password: an administrator set this password; the account's
-- next login may only change it (docs/accounts.md).
ALTER TABLE accounts
    ADD COLUMN password_changed_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN must_change_password boolean NOT NULL DEFAULT false;

-- ---- The service's database role, extended.
-- The service keeps sessions (insert; update only their use and end) and
-- lets an account change its own password through the API (update of the
-- password columns of accounts, nothing else of them).  Whatever the
-- function granted before this migration it still grants: the earlier one
-- is kept under another name and called first, so a migration of another
-- branch that replaced it too keeps its grants.
ALTER FUNCTION p11escrow_grant_service(text) RENAME TO p11escrow_grant_service_007;

CREATE FUNCTION p11escrow_grant_service(service text) RETURNS void
    LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
BEGIN
    -- Refusals (no such role, not the owner, a superuser) and REVOKE ALL first: there.
    PERFORM p11escrow_grant_service_007(service);
    EXECUTE format('GRANT SELECT, INSERT ON sessions TO %I', service);
    EXECUTE format('GRANT UPDATE (last_used_at, ended_at, end_reason) ON sessions TO %I', service);
    EXECUTE format('GRANT USAGE ON SEQUENCE sessions_id_seq TO %I', service);
    EXECUTE format('GRANT UPDATE (password_hash, password_changed_at, must_change_password) ON accounts TO %I',
                   service);
END $$;
REVOKE ALL ON FUNCTION p11escrow_grant_service(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION p11escrow_grant_service_007(text) FROM PUBLIC;

SELECT p11escrow_regrant_services();
