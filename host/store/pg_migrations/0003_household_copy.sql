-- E2E meters: the household's own sealed copy of each reading (iv + AES-CBC + tag under the
-- household key), stored opaque next to the utility's ciphertext; empty for proxy-mode readings.
ALTER TABLE readings ADD COLUMN household bytea NOT NULL DEFAULT '\x';
