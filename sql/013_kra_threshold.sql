-- 013: k-of-n KRA threshold (docs/archival.md, "Record version 2").
--
-- kra_threshold (k): how many KRAs of a record's set must take part to
-- recover it.  1: any one KRA recovers, the record is version 1, as
-- always.  k > 1: the record is version 2, its key encrypted under a
-- random KEK that is split with Shamir's scheme into kra_set_size shares,
-- one sealed to each KRA of the set.  1 <= k <= kra_set_size; the library
-- refuses a change that breaks it, naming both values (policy.c).
ALTER TABLE policy DROP CONSTRAINT policy_key_check;
ALTER TABLE policy ADD CONSTRAINT policy_key_check CHECK (key IN (
    'kra_set_size', 'allow_foreign_issuers', 'recovery_approvals', 'revoke_before_recovery',
    'one_key_per_subject', 'release_ttl_hours', 'cert_login_roles',
    'kra_min_rsa_bits', 'kra_min_ec_bits', 'kra_allow_rsa_pkcs1v15', 'kra_threshold'));
ALTER TABLE policy ADD CONSTRAINT policy_kra_threshold_check CHECK (
    key <> 'kra_threshold' OR value ~ '^([1-9]|1[0-6])$');
INSERT INTO policy (key, value) VALUES ('kra_threshold', '1');

-- The service's database role reads policy with the table-wide privilege
-- of 006 and never changes it: nothing new to grant.
