"""Audit: the decryption role's signed, hash-chained log, its anchors and the release ledger folded from it.

May hold: the audit *verify* key (public). May touch: common/. Never: any role's secret, the
gateway, the decryption role, the back office. The decryption role writes through `chain.AuditLog`
with its signing key; auditors and the privacy report only read and verify.
"""
