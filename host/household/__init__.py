"""The household's room: its own key (from its card) and nothing else.

It may read the store's rows (ciphertexts and opaque household copies) and open the copies sealed for
it; it never imports the gateway (meter keys), the decryption role (Paillier secret key) or the back
office (tools/import_contracts.py).
"""
