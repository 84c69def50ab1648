-- 011: KRA keys adopted from cards that hold them already, the recipient
-- form chosen by probing the card (and why), and the KRA key policy
-- (docs/security-officer-guide.md, "Adopting a key already on a card").
--
-- A KRA's key is either generated on the card by p11escrow or adopted: a
-- decryption key the card had before (issued by a card-management system,
-- generated or imported with the vendor's tool).  Either way the card
-- proves possession before the CA certifies the key (010's challenge).
-- Adopted keys may be RSA-2048 where policy allows it, and may be limited
-- to PKCS#1 v1.5 decryption: the recipient form 'rsa-pkcs1v15' exists only
-- for KRAs enrolled while policy kra_allow_rsa_pkcs1v15 was true.

-- ---- kras: how the key came to be, and why its recipient form was chosen.
ALTER TABLE kras DROP CONSTRAINT kras_recipient_check;
ALTER TABLE kras ADD CONSTRAINT kras_recipient_check CHECK (
    recipient IN ('rsa-oaep-sha1', 'rsa-oaep-sha256', 'rsa-pkcs1v15', 'ecdh'));
ALTER TABLE kras
    ADD COLUMN key_origin text NOT NULL DEFAULT 'generated' CHECK (key_origin IN ('generated', 'adopted')),
    -- What the card's probe showed, as the enrolling workstation reported it (NULL before 011).
    ADD COLUMN recipient_reason text CHECK (length(recipient_reason) BETWEEN 1 AND 300);

-- ---- kra_challenges: the same, for the pending KRA.
ALTER TABLE kra_challenges DROP CONSTRAINT kra_challenges_key_type_check;
ALTER TABLE kra_challenges ADD CONSTRAINT kra_challenges_key_type_check CHECK (
    key_type IN ('rsa2048', 'rsa3072', 'rsa4096', 'ec-p256', 'ec-p384'));
ALTER TABLE kra_challenges DROP CONSTRAINT kra_challenges_recipient_check;
ALTER TABLE kra_challenges ADD CONSTRAINT kra_challenges_recipient_check CHECK (
    recipient IN ('rsa-oaep-sha1', 'rsa-oaep-sha256', 'rsa-pkcs1v15', 'ecdh'));
ALTER TABLE kra_challenges
    ADD COLUMN key_origin text NOT NULL DEFAULT 'generated' CHECK (key_origin IN ('generated', 'adopted')),
    ADD COLUMN recipient_reason text CHECK (length(recipient_reason) BETWEEN 1 AND 300);

-- ---- Policy: the KRA key.
-- kra_min_rsa_bits: an RSA KRA key has at least this many bits (2048 only
-- for cards that hold no larger key); kra_min_ec_bits: an EC KRA key is on
-- a curve of at least this size (P-256 or P-384); kra_allow_rsa_pkcs1v15:
-- a card that decrypts RSA only with PKCS#1 v1.5 padding may be a KRA
-- (weaker: docs/threat-model.md).  Enforced at every enrollment.
ALTER TABLE policy DROP CONSTRAINT policy_key_check;
ALTER TABLE policy ADD CONSTRAINT policy_key_check CHECK (key IN (
    'kra_set_size', 'allow_foreign_issuers', 'recovery_approvals', 'revoke_before_recovery',
    'one_key_per_subject', 'release_ttl_hours', 'cert_login_roles',
    'kra_min_rsa_bits', 'kra_min_ec_bits', 'kra_allow_rsa_pkcs1v15'));
ALTER TABLE policy ADD CONSTRAINT policy_kra_min_rsa_bits_check CHECK (
    key <> 'kra_min_rsa_bits' OR value IN ('2048', '3072', '4096'));
ALTER TABLE policy ADD CONSTRAINT policy_kra_min_ec_bits_check CHECK (
    key <> 'kra_min_ec_bits' OR value IN ('256', '384'));
ALTER TABLE policy ADD CONSTRAINT policy_kra_allow_rsa_pkcs1v15_check CHECK (
    key <> 'kra_allow_rsa_pkcs1v15' OR value IN ('true', 'false'));
INSERT INTO policy (key, value) VALUES
    ('kra_min_rsa_bits', '3072'),
    ('kra_min_ec_bits', '256'),
    ('kra_allow_rsa_pkcs1v15', 'false');

-- ---- The service's database role: nothing new to grant.  It reads policy
-- and inserts into kras and kra_challenges with table-wide privileges (006,
-- 010), which cover the new columns; it never changes policy.  So
-- p11escrow_grant_service stays as 010 left it.
