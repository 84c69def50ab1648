-- 015: reserved for another branch's migration (this session's numbering:
-- helper C has 015, this branch 016).  Here only so that this branch builds
-- (sql/embed.py refuses gaps); the merge replaces it with the real 015.
SELECT 1;
