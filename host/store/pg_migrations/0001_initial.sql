-- meterveil store schema for PostgreSQL, version 1. Applied in one transaction by postgres.py.
--
-- readings: partitioned by UTC month of interval_start (one partition per month, created ahead by
-- the store; a month is dropped whole for retention). PostgreSQL 15 accepts neither a unique key
-- without the partition column nor an exclusion constraint on a partitioned table, so the two
-- integrity rules that span months live in reading_keys, an unpartitioned table written in the same
-- transaction: the arbiter between gateway workers.
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE readings(
    meter_id text NOT NULL,
    counter bigint NOT NULL,
    feeder text NOT NULL,
    interval_start bigint NOT NULL,
    interval_len integer NOT NULL CHECK (interval_len > 0),
    epsilon_milli integer NOT NULL,
    clamp_wh integer NOT NULL,
    m integer NOT NULL,
    flags integer NOT NULL DEFAULT 0,
    scheme text NOT NULL,
    ciphertext bytea NOT NULL,
    frame_digest bytea NOT NULL,
    received_at bigint NOT NULL
) PARTITION BY RANGE (interval_start);
CREATE INDEX readings_feeder_interval ON readings(feeder, interval_start);
CREATE INDEX readings_meter_interval ON readings(meter_id, interval_start);

-- One row per stored reading: (meter_id, counter) unique, and no two intervals of one meter overlap.
-- Concurrent inserts of a conflicting row wait for the first transaction and then do nothing.
CREATE TABLE reading_keys(
    meter_id text NOT NULL,
    counter bigint NOT NULL,
    span int8range NOT NULL,
    frame_digest bytea NOT NULL,
    received_at bigint NOT NULL,
    PRIMARY KEY (meter_id, counter),
    CONSTRAINT reading_keys_no_overlap EXCLUDE USING gist (meter_id WITH =, span WITH &&)
);

-- Counters are split in shards (one per store connection, chosen at random) so that two workers
-- committing at once do not queue on one hot row; readers sum the shards.
CREATE TABLE counters(
    reason text NOT NULL,
    shard smallint NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (reason, shard)
);
CREATE TABLE meter_counters(
    meter_id text NOT NULL,
    reason text NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (meter_id, reason)
);
CREATE TABLE meter_status(
    meter_id text PRIMARY KEY,
    counter bigint NOT NULL,
    received_at bigint NOT NULL,
    status_json text NOT NULL
);

-- Frames that may pass later, kept sealed as received. claimed_by/claimed_until: a worker retrying
-- a frame leases it, so another worker does not retry the same frame at the same time.
CREATE TABLE quarantine(
    digest bytea PRIMARY KEY,
    meter_id text NOT NULL,
    topic text NOT NULL,
    payload bytea NOT NULL,
    reason text NOT NULL,
    received_at bigint NOT NULL,
    last_try bigint NOT NULL DEFAULT 0,
    seq bigserial NOT NULL,
    claimed_by text NOT NULL DEFAULT '',
    claimed_until double precision NOT NULL DEFAULT 0
);
CREATE INDEX quarantine_meter ON quarantine(meter_id);
CREATE INDEX quarantine_retry ON quarantine(last_try, received_at, seq);
