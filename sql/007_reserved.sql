-- 007: reserved.  Another branch adds migration 007; this placeholder keeps
-- the numbering without gaps (sql/embed.py) until that branch is merged,
-- where its file replaces this one.  It changes nothing.
SELECT 1;
