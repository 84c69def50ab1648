-- 009: reserved.  The number belongs to another branch's migration
-- (account_certs, TLS client-certificate login), developed at the same time
-- as 010; migrations are numbered without gaps (embed.py), so this branch
-- holds the place with a migration that changes nothing.  When both
-- branches are merged, that branch's 009 replaces this file; 010 does not
-- depend on what 009 does.  Do not ship a release with this file.
SELECT 1;
