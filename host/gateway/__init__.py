"""The gateway: MQTT ingest, frame checks, the meter-key file, Paillier encryption with the public key.

Holds meter master keys (meter-keys.json) and the Paillier *public* key; refuses to start beside a
secret key. May touch: common/, store/, protocol/. Never the decryption role, the back office, the
audit log, pandas or matplotlib (tools/import_contracts.py, and a runtime test of the process).
"""
