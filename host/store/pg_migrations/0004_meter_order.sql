-- Billing streams readings ordered by meter id (one household's sums held at a time) and checks
-- that order as it goes: meter ids must sort bytewise, as in SQLite and Python, whatever the
-- database's locale. The (meter_id, interval_start) index is rebuilt with the column's collation
-- and serves that order.
ALTER TABLE readings ALTER COLUMN meter_id TYPE text COLLATE "C";
