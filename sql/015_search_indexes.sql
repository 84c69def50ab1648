-- 015: index-backed archive search and audit filters at any size
-- (docs/performance.md, "Scale"; docs/operator-guide.md, "Search indexes").
--
-- Each index matches the expression the queries use, so a lookup is an
-- index scan whether the table holds a thousand records or a million:
--
--   serial   ltrim(cert_serial, '0') = $1: the input is normalised by the
--            library (lower-case hex, no colons or leading zeros); the
--            column holds the certificate's hex, lower-case, with a leading
--            zero when its first byte is below 0x10.  The same expression
--            resolves a recovery request's serial and joins revocations.
--   email    lower(email) = lower($1): case-insensitive, exact.
--   subject  subject ILIKE '%text%' (the library escapes % _ \ in the
--            input): trigrams, pg_trgm's GIN operator class.
--   newest   ORDER BY created_at DESC LIMIT 100, a search without criteria.
--
-- pg_trgm ships with PostgreSQL (Debian: postgresql-15) and is a trusted
-- extension since PostgreSQL 13: the owner of the database (the role that
-- runs setup or db migrate) may create it without being a superuser, as
-- long as it holds CREATE on the database (its owner does).

CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;

CREATE INDEX archive_records_serial_norm_idx ON archive_records (ltrim(cert_serial, '0'));
CREATE INDEX archive_records_email_lower_idx ON archive_records (lower(email));
CREATE INDEX archive_records_subject_trgm_idx ON archive_records USING gin (subject gin_trgm_ops);
CREATE INDEX archive_records_created_idx ON archive_records (created_at);
-- Superseded: every query compares lower(email) (above) or a substring.
DROP INDEX archive_records_email_idx;
DROP INDEX archive_records_subject_idx;

-- A record named by its id as text (a.id::text = $1: request, approval,
-- release, completion, revocation, each step of a recovery reads its record
-- so; the text comparison never fails on a malformed id, where = $1::uuid
-- would) and its KRA rows likewise: without these each step read the whole
-- table, a second per step at a million records (docs/performance.md).
CREATE INDEX archive_records_id_text_idx ON archive_records ((id::text));
CREATE INDEX archive_record_kras_record_text_idx ON archive_record_kras ((record_id::text));
-- A recovery request's record, and the requests of a record (audit --serial).
CREATE INDEX recovery_requests_record_idx ON recovery_requests (record_id);
-- Revocations are joined on the normalised serial (archive listings, release).
CREATE INDEX revocations_serial_norm_idx ON revocations (ltrim(serial, '0'));

-- audit show/export filters.  Events are listed oldest first (ORDER BY id
-- LIMIT n): with the id second, an exact actor, action or object (or a
-- list of objects, --serial) is read from its index already in that order,
-- the first n and no more, however many events the account or object has.
-- --since / --until: the text timestamp, as hashed
-- (YYYY-MM-DDTHH:MM:SS.ffffffZ, which sorts in time order).
CREATE INDEX audit_events_actor_id_idx ON audit_events (actor, id);
CREATE INDEX audit_events_action_id_idx ON audit_events (action, id);
CREATE INDEX audit_events_object_id_idx ON audit_events (object, id);
DROP INDEX audit_events_actor_idx;
DROP INDEX audit_events_action_idx;
DROP INDEX audit_events_object_idx;
CREATE INDEX audit_events_at_idx ON audit_events (at);
