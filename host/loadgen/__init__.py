"""Load generator: correctly sealed frames for registered meters, published at a controlled rate.

Holds meter keys like provisioning does (it seals frames), so it never reaches the decryption role,
the back office or the audit log (tools/import_contracts.py).
"""
