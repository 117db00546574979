"""The web console and household portal: server-rendered pages over the store and released results.

Holds no key: no Paillier secret, no meter key, no household key (households decrypt their own copy
in the browser). Releases are requested through the release queue and made by the decryption
role's worker. May touch: common/, store/, audit/ (read only), backoffice/. Never the gateway, the
decryption role or the demo (tools/import_contracts.py and a runtime audit-hook test).
"""
