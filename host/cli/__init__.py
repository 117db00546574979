"""The `meterveil` command: a table of subcommands, each loading only the room that owns it.

The top layer: may import every room, but lazily, per command, so `meterveil gateway` never loads
the decryption role (tests/test_trust_boundaries.py checks the running process).
"""
