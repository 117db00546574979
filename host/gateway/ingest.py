"""Ingest pipeline: validate one sealed frame, Paillier-encrypt it, batch it for the store.

Why pure of MQTT: every check and counter is unit-testable with plain bytes; mqtt.py only moves
messages in and acknowledgements out (ack after ``commit``).

Pipeline per message (first failing step names the reason code; each is counted in the store, per
meter too, and logged once per (meter, reason) per ``log_interval_s``):

1. size <= max_payload (``oversize``), topic ``meterveil/v1/<id>/<reading|status>`` (``bad_topic``);
2. ``frame.parse_header`` (protocol reasons: truncated, bad_magic, bad_length, ...);
3. header meter id == topic meter id (``wrong_meter``), header kind matches the topic (``wrong_kind``);
4. meter in the registry (``unknown_meter``; the registry file is re-read when it changes);
5. ``frame.open_frame`` with the meter's key, then its previous key after a rotation (``bad_tag``,
   ``bad_padding``, ...);
6. counter: if (meter, counter) is already stored (or pending in this batch):
   same frame bytes -> ``duplicate`` (acked, counted, not stored again) when the broker flags it as a
   redelivery or it comes within ``duplicate_window_s`` of the first copy, else ``replay``;
   different bytes under the same counter -> ``counter_reuse``. A counter below the meter's high-water
   mark that is *not* stored is accepted: with QoS 1 and an outbox that drains oldest first, such a
   frame is a late delivery of a reading we never got (gaps are normal: status frames share the
   counter space), and storing it is idempotent. Its MAC proves the meter made it, so accepting it
   cannot inject data; refusing it would lose a real reading;
7. reading ranges: clock synced (``clock_unsynced``), interval length allowed and start aligned
   (``bad_interval``), not ending in the future beyond ``clock_skew_s`` (``future``), not older than
   ``max_age_s`` (``stale``: also bounds replays after old rows are pruned), billing_wh within what the
   meter's rated current can draw in the interval, DP parameters equal the registry's
   (``dp_mismatch``), analytics within [-B, clamp + B] where B is the largest noise share the meter's
   configured sampler draws except with probability 1e-12 (``common/noise_bound.py``), sample
   counters consistent (``out_of_range``);
8. no other reading of this meter, stored or pending, covers any of the interval
   (``interval_overlap``): the firmware seals an interval once, so a second reading for it is a
   faulty or cloned meter, and both would be billed;
9. encrypt (packed plaintext, one ciphertext) and add to the batch. Plaintext values exist only in
   this function's locals.

End-to-end meters (registry ``mode: e2e``) send kind 3 frames; a kind from the other mode is
``mode_mismatch``, decided from the header before anything is opened (for an E2E meter the gateway holds
only the MAC key and the key of its status frames, meter_keys.py, so it could not open a kind 1 anyway). For kind 3, step 5 verifies the MAC without decrypting anything (there is no AES
body), step 7 checks what the header and the public flags say (clock, interval, future, stale,
missing_s) but no value: the value is the meter's Paillier ciphertext, which must be a unit below n^2
(``bad_ciphertext``) and is stored as received, next to the household's sealed copy. Value range checks
move to the decryption role (it refuses a physically impossible sum).

Quarantine: a frame rejected as ``unknown_meter``, ``future`` or ``dp_mismatch`` may be genuine and pass
later (meter registered after it started sending, gateway clock behind, DP parameters being
re-provisioned). It is counted like any rejection and acked (the meter's outbox then forgets it), but
kept sealed, as received, in the store's quarantine within the room store/quarantine.py gives its
sender; ``release_quarantine`` (run by the MQTT worker every ``quarantine_retry_s``) retries only
frames that can pass now (their meter is in the registry, and a ``future`` frame's interval has
come), so junk for ids nobody registered never delays a genuine frame. A frame settles when it is
accepted, a duplicate, or rejected for a lasting reason; one still held after ``max_age_s`` expires.
A reading for an unknown id must at least look like one (aligned interval of an allowed length, not
stale) to be kept: a header no key has checked buys room only if it could be genuine.

Status frames pass steps 1-5, must not be sealed beyond ``clock_skew_s`` in the future (``future``),
and are kept as the latest status per meter: the one sealed last (header time, then counter; a time
before 2020 means the meter's clock was not set and sorts first), so no counter, however high, pins
a meter's status. A resend of the stored latest one counts as ``duplicate``; an older one arriving
late (the meter's last will, sealed at connect time, is the usual case) is counted as
``status_superseded`` and not stored: neither is a rejection.
Anything unexpected is ``internal_error``: counted and logged, never raised to the transport.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from meterveil.host.common.noise_bound import noise_share_bound
from meterveil.host.common.registry import rated_max_wh
from meterveil.host.gateway.encryptor import ReadingEncryptor
from meterveil.host.gateway.meter_keys import KeyedMeter, KeyedRegistry, frame_keys
from meterveil.host.store.base import (
    SCHEME_PACKED_E2E_V1,
    SCHEME_PACKED_V1,
    Batch,
    QuarantinedFrame,
    StatusRecord,
    Store,
    StoredReading,
)
from meterveil.protocol import e2e, frame, opener, paillier
from meterveil.protocol import errors as frame_errors

log = logging.getLogger("meterveil.gateway")

TOPIC_RE = re.compile("^" + re.escape(frame.TOPIC_ROOT) + r"/([A-Za-z0-9_-]{1,16})/(" + "|".join(frame.TOPIC_LEAVES) + ")$")
KINDS_BY_LEAF = {"reading": (frame.KIND_READING, frame.KIND_READING_PAILLIER), "status": (frame.KIND_STATUS,)}
# Flags that say something about consumption (above clamp, ADC saturated) are not stored.
STORED_FLAGS = frame.FLAG_CLOCK_UNSYNCED | frame.FLAG_PARTIAL_INTERVAL
REASONS = ("oversize", "bad_topic", *frame_errors.REASONS, "wrong_kind", "unknown_meter", "duplicate",
           "replay", "counter_reuse", "clock_unsynced", "bad_interval", "future", "stale", "out_of_range",
           "dp_mismatch", "interval_overlap", "mode_mismatch", "bad_ciphertext", "quarantine_full",
           "quarantine_evicted", "quarantine_expired", "internal_error")
# Counters that are outcomes, not rejections (everything else in the counters table is a rejection).
NOT_REJECTIONS = ("accepted", "duplicate", "status", "status_superseded", "quarantine_released")
# Rejections that can pass later: the frame is kept (sealed) and retried, not lost.
QUARANTINE_REASONS = ("unknown_meter", "future", "dp_mismatch")
# A header time before this (2020-01-01) comes from a meter whose clock was never set.
CLOCK_SET_AFTER = 1_577_836_800


@dataclass(frozen=True)
class IngestConfig:
    """Validation policy. Defaults suit 15-minute readings from single-phase household meters."""

    max_payload: int = frame.MAX_FRAME
    clock_skew_s: int = 300
    max_age_s: int = 62 * 86400
    duplicate_window_s: int = 6 * 3600
    interval_lens: tuple[int, ...] = (60, 300, 600, 900, 1800, 3600)
    rated_amps: float = 100.0     # registry attribute ``rated_amps`` overrides
    volts: float = 250.0          # registry attribute ``volts`` overrides
    phases: int = 1               # registry attribute ``phases`` overrides
    range_margin: float = 1.25
    log_interval_s: float = 60.0
    registry_recheck_s: float = 1.0


@dataclass(frozen=True)
class Message:
    """One MQTT message as the pipeline sees it (``dup``: broker marked it as a redelivery)."""

    topic: str
    payload: bytes
    dup: bool = False


@dataclass(frozen=True)
class Outcome:
    status: str               # "accepted", "duplicate", "status", "rejected", "quarantined"
    reason: str               # reason code ("accepted"/"status" when not rejected)
    meter_id: str | None = None
    counter: int | None = None


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = "", retry_at: int | None = None):
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail
        self.retry_at = retry_at  # a quarantined frame cannot pass before this time


@dataclass
class _LogLimiter:
    interval_s: float
    clock: Callable[[], float]
    _last: dict[tuple[str | None, str], tuple[float, int]] = field(default_factory=dict)

    def log(self, meter_id: str | None, reason: str, detail: str, exc_info: bool = False) -> None:
        key = (meter_id, reason)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return
        suppressed = last[1] if last else 0
        self._last[key] = (now, 0)
        more = f" (+{suppressed} suppressed)" if suppressed else ""
        log.warning("rejected frame meter=%s reason=%s: %s%s", meter_id or "?", reason, detail, more,
                    exc_info=exc_info)


class Gateway:
    """Validates and encrypts messages into a pending Batch; ``commit()`` makes it durable."""

    def __init__(self, store: Store, registry: KeyedRegistry, encryptor: ReadingEncryptor,
                 config: IngestConfig | None = None, clock: Callable[[], float] = time.time):
        if not encryptor.packed:
            raise ValueError("the store holds one ciphertext per reading: use a packed strategy")
        self.store = store
        self.registry = registry
        self.encryptor = encryptor
        self.config = config or IngestConfig()
        self.clock = clock
        self.batch = Batch()
        self._pending: dict[tuple[str, int], bytes] = {}
        self._pending_spans: dict[str, list[tuple[int, int]]] = {}
        # Per meter (highest counter, latest interval end) stored or pending, kept only when this
        # process is the store's one writer: a frame above both cannot be a duplicate nor overlap, so
        # the in-order common case needs no store query (out-of-order frames still ask the store).
        self._single_writer = bool(getattr(store, "single_writer", False))
        self._hw: dict[str, tuple[int, int]] = {}
        self._status_pending: dict[str, tuple[int, int]] = {}
        # what `prefetch` fetched for the messages being processed: (meter, counter) -> stored
        # (digest, received_at) or None; (meter, start, end) -> overlapping stored counter or None
        self._fetched_keys: dict[tuple[str, int], tuple[bytes, int] | None] = {}
        self._fetched_spans: dict[tuple[str, int, int], int | None] = {}
        self._keys: dict[str, tuple[bytes, tuple[bytes, bytes], tuple[bytes, bytes] | None]] = {}
        self._registry_checked = 0.0
        self._replaying = False
        self._replay_retry_at: int | None = None
        self._limiter = _LogLimiter(self.config.log_interval_s, time.monotonic)

    # -- public ---------------------------------------------------------------------------------
    def process(self, msg: Message) -> Outcome:
        """Run the pipeline on one message; never raises."""
        m = TOPIC_RE.match(msg.topic) if isinstance(msg.topic, str) else None
        topic_meter = m.group(1) if m else None
        try:
            if len(msg.payload) > self.config.max_payload:
                raise Rejected("oversize", f"{len(msg.payload)} bytes > {self.config.max_payload}")
            if m is None:
                raise Rejected("bad_topic", f"topic {str(msg.topic)[:80]!r}")
            return self._process(msg, m.group(1), m.group(2))
        except Rejected as rej:
            if rej.reason in QUARANTINE_REASONS and topic_meter is not None:
                return self._quarantine(msg, topic_meter, rej)
            return self._reject(topic_meter, rej.reason, rej.detail)
        except frame_errors.FrameError as exc:
            return self._reject(topic_meter, exc.reason, str(exc))
        except Exception as exc:  # noqa: BLE001 - the gateway must survive any input
            return self._reject(topic_meter, "internal_error", type(exc).__name__, exc_info=True)

    def pending(self) -> int:
        return len(self.batch)

    def prefetch(self, msgs: Sequence[Message]) -> None:
        """Fetch in two store queries what the duplicate and overlap checks of `msgs` will ask.

        Why: with several workers (no single writer to keep high-water marks) each reading asked
        the store twice, two round trips per reading, which bounded ingest on a networked database.
        The headers read here are not authenticated yet: they only choose which rows to fetch. Each
        check still runs on the verified header after the MAC (a key not fetched is asked singly),
        and the database stays the arbiter at commit."""
        if self._single_writer:
            return
        keys, spans = [], []
        for msg in msgs:
            if len(msg.payload) > self.config.max_payload:
                continue
            try:
                h = opener.parse_header(bytes(msg.payload))
            except frame_errors.FrameError:
                continue
            if h["kind"] == frame.KIND_STATUS:
                continue
            keys.append((h["meter_id"], h["counter"]))
            spans.append((h["meter_id"], h["interval_start"], h["interval_start"] + h["interval_len"]))
        if keys:
            found = self.store.lookup_many(keys)
            self._fetched_keys.update((k, found.get(k)) for k in keys)
            overlaps = self.store.overlapping_many(spans)
            self._fetched_spans.update((sp, overlaps.get(sp)) for sp in spans)

    def release_quarantine(self, limit: int = 1000) -> dict[str, int]:
        """Retry up to `limit` quarantined frames that can pass now, expire those held past `max_age_s`,
        and commit; outcome -> count ("kept" for those still waiting).

        Only frames of meters now in the registry are retried, and a ``future`` frame only once its
        interval has come, least recently tried first: frames for ids nobody registered cost nothing
        and delay nobody. A frame leaves on a definite outcome: accepted, duplicate, or rejected for
        a lasting reason. `internal_error` keeps it (the meter has forgotten it; a passing fault must
        not lose it). One still held after `max_age_s` (a meter never registered, a clock years ahead)
        expires: counted `quarantine_expired` against its meter id, a loss that stats reports.
        """
        out: dict[str, int] = {}
        now = int(self.clock())
        self._registry_checked = 0.0  # a meter registered a moment ago must be seen now
        self._reload_registry()
        known = [m for m in self.store.quarantine_meter_ids() if self.registry.get(m) is not None]
        settled: set[bytes] = set()
        for q in self.store.quarantined(limit, meter_ids=known, due_by=now) if known else ():
            self._replaying, self._replay_retry_at = True, None
            try:
                res = self.process(Message(q.topic, q.payload))
            finally:
                self._replaying, retry_at = False, self._replay_retry_at
            key = "kept" if res.status == "quarantined" or res.reason == "internal_error" else res.reason
            if key == "kept":
                self.batch.retried.append((q.digest, res.reason, retry_at))
            else:
                settled.add(q.digest)
                self.batch.released.append(q.digest)
                self.batch.count("quarantine_released", q.meter_id)
            out[key] = out.get(key, 0) + 1
        for q in self.store.quarantine_expiring(now - self.config.max_age_s, limit):
            if q.digest in settled:
                continue
            self.batch.released.append(q.digest)
            self.batch.count("quarantine_expired", q.meter_id)
            out["quarantine_expired"] = out.get("quarantine_expired", 0) + 1
            self.batch.retried[:] = [r for r in self.batch.retried if r[0] != q.digest]
        self.commit()
        return out

    def commit(self) -> list[bool]:
        """Write the pending batch in one durable transaction; afterwards the messages may be acked."""
        batch, self.batch = self.batch, Batch()
        self._pending.clear()
        self._fetched_keys.clear()
        self._fetched_spans.clear()
        self._pending_spans.clear()
        self._status_pending.clear()
        if not len(batch):
            return []
        try:
            return self.store.write_batch(batch)
        except BaseException:
            self._hw.clear()  # what was pending is not stored: ask the store again
            raise

    # -- steps ----------------------------------------------------------------------------------
    def _quarantine(self, msg: Message, meter_id: str, rej: Rejected) -> Outcome:
        if self._replaying:  # already held: nothing new to count or keep
            self._replay_retry_at = rej.retry_at
            return Outcome("quarantined", rej.reason, meter_id)
        payload = bytes(msg.payload)
        self.batch.quarantine.append(QuarantinedFrame(hashlib.sha256(payload).digest(), meter_id, msg.topic,
                                                      payload, rej.reason, int(self.clock()), rej.retry_at))
        self._reject(meter_id, rej.reason, rej.detail + " (kept in quarantine, retried later)")
        return Outcome("quarantined", rej.reason, meter_id)

    def _reject(self, meter_id: str | None, reason: str, detail: str, exc_info: bool = False) -> Outcome:
        self.batch.count(reason, meter_id)
        self._limiter.log(meter_id, reason, detail, exc_info)
        return Outcome("rejected", reason, meter_id)

    def _reload_registry(self) -> bool:
        """Re-read the registry if it changed on disk (at most once per registry_recheck_s)."""
        now = time.monotonic()
        if now - self._registry_checked < self.config.registry_recheck_s:
            return False
        self._registry_checked = now
        if self.registry.reload_if_changed():
            self._keys.clear()
            return True
        return False

    def _record(self, meter_id: str) -> KeyedMeter:
        rec = self.registry.get(meter_id, self.clock())
        if rec is None and self._reload_registry():
            rec = self.registry.get(meter_id, self.clock())
        if rec is None:
            raise Rejected("unknown_meter", "not in the meter registry")
        return rec

    def _derived(self, rec: KeyedMeter) -> tuple:
        """((key, previous key), derived keys, derived previous keys or None), cached per meter."""
        cached = self._keys.get(rec.meter_id)
        if cached is None or cached[0] != (rec.key, rec.previous_key):  # a retired previous key drops out
            prev = frame_keys(rec.previous_key) if rec.previous_key is not None else None
            cached = ((rec.key, rec.previous_key), frame_keys(rec.key), prev)
            self._keys[rec.meter_id] = cached
        return cached

    def _open_with(self, rec: KeyedMeter, payload: bytes, topic_meter: str) -> dict:
        cached = self._derived(rec)
        try:
            return frame.open_frame(cached[1], payload, topic_meter=topic_meter)
        except frame_errors.BadTag:
            if cached[2] is None:
                raise
            return frame.open_frame(cached[2], payload, topic_meter=topic_meter)

    def _open(self, rec: KeyedMeter, payload: bytes, topic_meter: str) -> tuple[KeyedMeter, dict]:
        """Open with the meter's key(s); on a bad tag, pick up a key rotated on disk and retry once."""
        try:
            return rec, self._open_with(rec, payload, topic_meter)
        except frame_errors.BadTag:
            if not self._reload_registry():
                raise
            fresh = self.registry.get(rec.meter_id, self.clock())
            if fresh is None or fresh.key == rec.key:
                raise
            return fresh, self._open_with(fresh, payload, topic_meter)

    def _process(self, msg: Message, topic_meter: str, leaf: str) -> Outcome:
        payload = bytes(msg.payload)
        header = opener.parse_header(payload)
        if header["meter_id"] != topic_meter:
            raise Rejected("wrong_meter", f"header meter {header['meter_id']} on its topic")
        if header["kind"] not in KINDS_BY_LEAF[leaf]:
            raise Rejected("wrong_kind", f"kind {header['kind']} on {leaf} topic")
        try:
            rec = self._record(topic_meter)
        except Rejected as rej:
            if rej.reason == "unknown_meter":
                self._check_unverified(header)
            raise
        e2e_frame = header["kind"] == frame.KIND_READING_PAILLIER
        if e2e_frame != rec.end_to_end and header["kind"] != frame.KIND_STATUS:
            # An E2E meter never shows the gateway a value (refused before anything is opened: the gateway
            # has no key for it anyway); a proxy meter's kind 3 has nothing to check it by.
            mode = "e2e" if rec.end_to_end else rec.mode
            raise Rejected("mode_mismatch", f"kind {header['kind']} from a {mode} meter")
        if e2e_frame:
            return self._process_e2e(msg, rec, payload, topic_meter, header)
        rec, opened = self._open(rec, payload, topic_meter)
        header, fields = opened["header"], opened["fields"]
        now = self.clock()
        if header["kind"] == frame.KIND_STATUS:
            return self._status(rec, header, fields, now)
        digest = hashlib.sha256(payload).digest()[:16]
        dup = self._check_counter(rec.meter_id, header["counter"], digest, msg.dup, now)
        if dup is not None:
            return dup
        self._check_reading(rec, header, fields, now)
        self._check_overlap(rec.meter_id, header["counter"], header["interval_start"], header["interval_len"])
        (ciphertext,) = self.encryptor.encrypt_reading(fields["billing_wh"], fields["analytics_wh"])
        self._append(rec, header, ciphertext, fields["flags"], digest, now, SCHEME_PACKED_V1)
        return Outcome("accepted", "accepted", rec.meter_id, header["counter"])

    def _process_e2e(self, msg: Message, rec: KeyedMeter, payload: bytes, topic_meter: str,
                     parsed: dict) -> Outcome:
        """Kind 3: verify the MAC and the header, store the ciphertext and the household copy as received.

        Nothing here can open a value: the Paillier ciphertext needs the decryption role's secret key, the
        household copy the household's key. Value range checks move to the decryption role."""
        rec, header = self._verify(rec, payload, topic_meter, parsed)
        pub = self.encryptor.pub
        if header["body_len"] != e2e.body_len(paillier.nsq_len(pub.n)):
            raise frame_errors.BadLength(f"body_len {header['body_len']} does not fit the utility key")
        meta, ciphertext, household = opener.split_e2e(payload, header["body_len"])
        now = self.clock()
        digest = hashlib.sha256(payload).digest()[:16]
        dup = self._check_counter(rec.meter_id, header["counter"], digest, msg.dup, now)
        if dup is not None:
            return dup
        self._check_header(rec, header, meta["flags"], now)
        if meta["missing_s"] > header["interval_len"]:
            raise Rejected("out_of_range", "missing_s longer than the interval")
        # A ciphertext sharing a factor with n but not a multiple of n would reveal a factor of n: no
        # meter can make one. Zero and multiples of n are what a broken or hostile meter could send.
        if not 0 < ciphertext < pub.nsquare or ciphertext % pub.n == 0:
            raise Rejected("bad_ciphertext", "not a unit mod n^2: would corrupt every sum it joins")
        self._check_dp(rec, header)
        self._check_overlap(rec.meter_id, header["counter"], header["interval_start"], header["interval_len"])
        self._append(rec, header, ciphertext, meta["flags"], digest, now, SCHEME_PACKED_E2E_V1, household)
        return Outcome("accepted", "accepted", rec.meter_id, header["counter"])

    def _verify(self, rec: KeyedMeter, payload: bytes, topic_meter: str, parsed: dict) -> tuple[KeyedMeter, dict]:
        """MAC check with the meter's key(s), as _open but without decrypting (kind 3 has no AES body)."""
        def verify(r: KeyedMeter) -> dict:
            cached = self._derived(r)
            try:
                return opener.verify_frame(cached[1][1], payload, topic_meter, parsed)
            except frame_errors.BadTag:
                if cached[2] is None:
                    raise
                return opener.verify_frame(cached[2][1], payload, topic_meter, parsed)
        try:
            return rec, verify(rec)
        except frame_errors.BadTag:
            if not self._reload_registry():
                raise
            fresh = self.registry.get(rec.meter_id)
            if fresh is None or fresh.key == rec.key:
                raise
            return fresh, verify(fresh)

    def _append(self, rec: KeyedMeter, header: dict, ciphertext: int, flags: int, digest: bytes, now: float,
                scheme: str, household: bytes = b"") -> None:
        self.batch.readings.append(StoredReading(
            meter_id=rec.meter_id, counter=header["counter"], feeder=rec.feeder,
            interval_start=header["interval_start"], interval_len=header["interval_len"],
            epsilon_milli=header["epsilon_milli"], clamp_wh=header["clamp_wh"], m=header["m"],
            ciphertext=ciphertext, flags=flags & STORED_FLAGS, scheme=scheme, frame_digest=digest,
            received_at=int(now), household=household))
        self._pending[(rec.meter_id, header["counter"])] = digest
        end = header["interval_start"] + header["interval_len"]
        self._pending_spans.setdefault(rec.meter_id, []).append((header["interval_start"], end))
        if self._single_writer:
            hw = self._high_water(rec.meter_id)
            self._hw[rec.meter_id] = (max(hw[0], header["counter"]), max(hw[1], end))

    def _high_water(self, meter_id: str) -> tuple[int, int]:
        hw = self._hw.get(meter_id)
        if hw is None:
            c, e = self.store.max_counter(meter_id), self.store.max_interval_end(meter_id)
            hw = self._hw[meter_id] = (-1 if c is None else c, -1 if e is None else e)
        return hw

    def _check_unverified(self, h: dict) -> None:
        """A reading for an unknown meter id is kept only if its (unauthenticated) header could be genuine:
        what would reject it for good once its meter is registered rejects it now."""
        if h["kind"] != frame.KIND_READING:
            return
        cfg, now = self.config, self.clock()
        ilen, start = h["interval_len"], h["interval_start"]
        if ilen not in cfg.interval_lens or start % ilen:
            raise Rejected("bad_interval", f"interval {start}+{ilen} (unknown meter)")
        if start < now - cfg.max_age_s:
            raise Rejected("stale", f"interval {int(now - start)} s old (unknown meter)")

    def _check_overlap(self, meter_id: str, counter: int, start: int, length: int) -> None:
        end = start + length
        if any(s < end and start < e for s, e in self._pending_spans.get(meter_id, ())):
            raise Rejected("interval_overlap", f"counter {counter}: interval {start}+{length} already pending")
        if self._single_writer and start >= self._high_water(meter_id)[1]:
            return
        span = (meter_id, start, end)
        other = self._fetched_spans[span] if span in self._fetched_spans else self.store.overlapping(*span)
        if other is not None:
            raise Rejected("interval_overlap", f"counter {counter}: interval {start}+{length} overlaps "
                                               f"stored counter {other}")

    def _check_counter(self, meter_id: str, counter: int, digest: bytes, dup_flag: bool,
                       now: float) -> Outcome | None:
        pend = self._pending.get((meter_id, counter))
        if pend is None and self._single_writer and counter > self._high_water(meter_id)[0]:
            return None
        if pend is not None:
            seen: tuple[bytes, int] | None = (pend, int(now))
        elif (meter_id, counter) in self._fetched_keys:
            seen = self._fetched_keys[(meter_id, counter)]
        else:
            seen = self.store.lookup(meter_id, counter)
        if seen is None:
            return None
        stored_digest, received_at = seen
        if stored_digest != digest:
            raise Rejected("counter_reuse", f"counter {counter} already stored with other content")
        if dup_flag or now - received_at <= self.config.duplicate_window_s:
            self.batch.count("duplicate", meter_id)
            return Outcome("duplicate", "duplicate", meter_id, counter)
        raise Rejected("replay", f"counter {counter} stored {int(now - received_at)} s ago")

    def _check_header(self, rec: KeyedMeter, h: dict, flags: int, now: float) -> None:
        """The checks both modes share: clock, interval grid, not future, not stale."""
        cfg = self.config
        if flags & frame.FLAG_CLOCK_UNSYNCED:
            raise Rejected("clock_unsynced", "meter clock not synchronised")
        ilen, start = h["interval_len"], h["interval_start"]
        if ilen not in cfg.interval_lens or start % ilen:
            raise Rejected("bad_interval", f"interval {start}+{ilen}")
        if start + ilen > now + cfg.clock_skew_s:
            raise Rejected("future", f"interval ends {int(start + ilen - now)} s in the future",
                           retry_at=start + ilen - cfg.clock_skew_s)
        if start < now - cfg.max_age_s:
            raise Rejected("stale", f"interval {int(now - start)} s old")

    @staticmethod
    def _check_dp(rec: KeyedMeter, h: dict) -> None:
        if (h["epsilon_milli"], h["clamp_wh"], h["m"]) != (rec.epsilon_milli, rec.clamp_wh, rec.m):
            raise Rejected("dp_mismatch", f"dp params {h['epsilon_milli']}/{h['clamp_wh']}/{h['m']} "
                                          f"!= registry {rec.epsilon_milli}/{rec.clamp_wh}/{rec.m}")

    def _check_reading(self, rec: KeyedMeter, h: dict, f: dict, now: float) -> None:
        cfg = self.config
        self._check_header(rec, h, f["flags"], now)
        ilen = h["interval_len"]
        max_wh = rated_max_wh(rec.attributes, ilen, margin=cfg.range_margin,
                              defaults={"volts": cfg.volts, "rated_amps": cfg.rated_amps, "phases": cfg.phases})
        if not 0 <= f["billing_wh"] <= max_wh:
            # no values in the message: logs must not carry readings
            raise Rejected("out_of_range", f"billing_wh outside [0, {int(max_wh)}]")
        self._check_dp(rec, h)
        # the parameters are the registry's: bound the share by what the configured sampler draws
        share = noise_share_bound(rec.epsilon_milli, rec.clamp_wh, rec.m)
        if not -share <= f["analytics_wh"] <= rec.clamp_wh + share:
            raise Rejected("out_of_range", "analytics_wh outside [-B, clamp + B] (B: largest honest noise share)")
        if f["missing_s"] > ilen or f["clipped"] > f["samples"]:
            raise Rejected("out_of_range", "sample counters inconsistent")

    def _status(self, rec: KeyedMeter, h: dict, f: dict, now: float) -> Outcome:
        sealed = h["interval_start"]
        if sealed > now + self.config.clock_skew_s:
            raise Rejected("future", f"status sealed {int(sealed - now)} s in the future",
                           retry_at=sealed - self.config.clock_skew_s)
        order = (sealed if sealed >= CLOCK_SET_AFTER else 0, h["counter"])
        latest = self._status_pending.get(rec.meter_id)
        if latest is None:
            stored = self.store.latest_status(rec.meter_id)
            latest = (stored.sealed_at, stored.counter) if stored else None
        if latest is not None and h["counter"] == latest[1]:
            # Counters never repeat on a meter and the MAC verified: an equal counter is a resend.
            self.batch.count("duplicate", rec.meter_id)
            return Outcome("duplicate", "duplicate", rec.meter_id, h["counter"])
        if latest is not None and order < latest:
            self.batch.count("status_superseded", rec.meter_id)
            return Outcome("status", "status_superseded", rec.meter_id, h["counter"])
        self._status_pending[rec.meter_id] = order
        self.batch.statuses.append(StatusRecord(rec.meter_id, h["counter"], int(now), dict(f), order[0]))
        self.batch.count("status", rec.meter_id)
        return Outcome("status", "status", rec.meter_id, h["counter"])


def stats_summary(store: Store) -> dict:
    """What `meterveil stats` prints: outcomes, each rejection reason, and the rejection total."""
    counters = store.counters()
    rejected = {k: v for k, v in counters.items() if k not in NOT_REJECTIONS}
    return {"accepted": counters.get("accepted", 0), "duplicate": counters.get("duplicate", 0),
            "status": counters.get("status", 0), "status_superseded": counters.get("status_superseded", 0),
            "rejected_total": sum(rejected.values()), "rejected": rejected,
            "quarantined": store.quarantine_counts(),
            "readings": store.count_readings(), "meters": len(store.meters())}
