-- Quarantine pools (store/quarantine.py: verified frames get room per registered meter, unverified
-- ids a per-id cap and a fair share), a retry time, and statuses ordered by when they were sealed.
ALTER TABLE quarantine ADD COLUMN pool text NOT NULL DEFAULT 'verified';
ALTER TABLE quarantine ADD COLUMN retry_at bigint;
UPDATE quarantine SET pool = 'unverified' WHERE reason = 'unknown_meter';
CREATE INDEX quarantine_received ON quarantine(received_at);
CREATE INDEX quarantine_pool_meter ON quarantine(pool, meter_id);
ALTER TABLE meter_status ADD COLUMN sealed_at bigint NOT NULL DEFAULT 0;
