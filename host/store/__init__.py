"""The ciphertext store: the `Store` interface, its SQLite (embedded) and PostgreSQL (scale) backends.

Holds no key and knows no role: readings are ciphertexts plus metadata. May touch: common/ only.
"""
