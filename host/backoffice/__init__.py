"""Back office: tariffs, billing maths, homomorphic sums, DP maths, the privacy report and exports' anonymisation.

Holds no key of any role. May touch: common/, store/, audit/ (read-only ledger). Never the gateway
(meter keys) or the decryption role (secret key): it computes on ciphertexts and on released numbers.
"""
