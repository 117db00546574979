"""What every role may import: the atomic 0600 writer, the Paillier public key file, the key-free
meter registry, the packed plaintext layout, output paths, the release queue and the frame value bound.

Holds no secret and imports no role (tools/import_contracts.py: common is the bottom layer).
"""
