"""The portal's household copies on both store backends: what `/household/copies.json` serves for a
meter is exactly the copies its E2E rows keep (readings.household), each opening with the household key
as the reading it was sealed for; a proxy-mode meter has none; months follow the copies."""

from __future__ import annotations

import base64

import pytest
from webutil import seal_e2e

from meterveil.host.decryption.secret_key import generate_keypair
from meterveil.host.store.base import SCHEME_PACKED_E2E_V1, Batch, StoredReading, open_store
from meterveil.host.web.households import HouseholdCopies, month_bounds
from meterveil.protocol import e2e, household

T0 = 1793471400  # 2026-10-31 18:30 UTC: the day straddles two UTC months
KEY = bytes(range(7, 39))  # test key, not a secret


@pytest.fixture(params=["sqlite", "postgres"])
def where(request, tmp_path):
    return str(tmp_path / "s.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")


def test_portal_serves_the_e2e_rows_copies_from_either_backend(where):
    n = generate_keypair(512)[0].n
    truth, rows = {}, []
    for k in range(96):
        start, wh = T0 + 900 * k, 50 + k
        ct, copy = seal_e2e(n, "m1", k + 1, start, wh, KEY)
        rows.append(StoredReading("m1", k + 1, "F1", start, 900, 1000, 500, 5, ct, scheme=SCHEME_PACKED_E2E_V1,
                                  household=copy))
        truth[start] = wh
        rows.append(StoredReading("m2", k + 1, "F1", start, 900, 1000, 500, 5, ct))  # proxy mode: no copy
    store = open_store(where)
    try:
        assert all(store.write_batch(Batch(readings=rows)))
    finally:
        store.close()
    copies = HouseholdCopies(where)
    try:
        assert copies.months("m1") == ["2026-11", "2026-10"] and copies.months("m2") == []
        keys = e2e.household_keys(KEY)
        got = {}
        for month in copies.months("m1"):
            t0, t1 = month_bounds(month)
            for c in copies.month("m1", month):
                assert t0 <= c["start"] < t1 and c["len"] == 900
                opened = household.open_copy(keys, base64.b64decode(c["copy"]), "m1", c["counter"], c["start"],
                                             c["len"])
                got[c["start"]] = opened["billing_wh"]
        assert got == truth
        assert copies.month("m2", "2026-11") == []
    finally:
        copies.close()
