"""The decryption role: the only holder of the Paillier secret key and the audit signing key.

Its folder (keys init --secret-dir) holds those keys and its own database (signed audit log). It
releases only what policy allows: bills, DP feeder sums, exports, each decision audited. May
touch: common/, store/ (read only), audit/, backoffice/. Never the gateway or any meter key.
"""
