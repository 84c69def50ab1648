-- 011: reserved for the KRA card policy migration of the 'adopt' branch
-- (sql/011_kra_card_policy.sql there).  This placeholder only keeps the
-- numbering without gaps (sql/embed.py) on the 'storagekey' branch: when
-- both branches meet, the adopt branch's file replaces this one.
SELECT 1;
