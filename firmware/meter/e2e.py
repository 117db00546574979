# End-to-end mode on the meter: each reading leaves as a kind 3 frame, its packed value encrypted
# under the utility's Paillier key (protocol/paillier.py) and its exact energy sealed for the
# household (protocol/e2e.py). Why obfuscators ahead of time: hs^a mod n^2 costs ~1,500 modular
# multiplications (seconds on an ESP32); computed a few multiplications per ADC block while the
# interval runs, sampling never waits for it, and the seal itself costs one multiplication.
# Finished obfuscators are kept in flash (<storage>/obf0, obf1) so the reading sealed right
# after a reboot does not wait either. Each is deleted before it is used: used once, never again
# (two readings under one obfuscator would reveal their difference). docs/FIRMWARE.md "End-to-end".
import binascii
import os
import time

from meter import persist

try:
    from protocol import e2e, paillier
except ImportError:  # CPython tools validating a config import this module with firmware/ on the path
    from meterveil.protocol import e2e, paillier

try:
    from micropython import const
except ImportError:  # CPython (tests)
    def const(x):
        return x

_POOL = const(2)  # obfuscators kept ready: one for the next reading, one for a seal right after boot


def _crc(text):
    return binascii.crc32(text.encode()) & 0xFFFFFFFF


class E2E:
    def __init__(self, cfg, storage_dir, log):
        # cfg: the config's "e2e" section (n, hs, exp_bits, household_key, step_ms)
        self.n = int(cfg["n"], 16)
        self.hs = int(cfg["hs"], 16)
        self.exp_bits = cfg["exp_bits"]
        self.step_us = 1000 * (cfg.get("step_ms") or 20)
        self.household_keys = e2e.household_keys(binascii.unhexlify(cfg["household_key"]))
        self.dir = storage_dir
        self.log = log
        self.ready = []    # [(slot, value)] loaded from flash or finished since boot
        self.work = None   # the obfuscator being computed, step by step
        self.e2e_stalls = 0  # seals that had to compute an obfuscator on the spot
        self.rand = os.urandom  # the app hands over its DRBG once it is seeded
        for slot in range(_POOL):
            v = self._load(slot)
            if v is not None:
                self.ready.append((slot, v))

    def _path(self, slot):
        return self.dir + "/obf%d" % slot

    def _load(self, slot):
        # A torn or corrupt file is dropped: a wrong obfuscator would make a ciphertext that
        # decrypts to garbage, silently corrupting every sum it joins.
        text = persist.read_atomic(self._path(slot))
        if text is None:
            return None
        parts = text.split()
        if len(parts) == 2 and parts[1] == str(_crc(parts[0])):
            v = int(parts[0], 16)
            if 0 < v < self.n * self.n:
                return v
        self.log("e2e: dropped a bad obfuscator file (slot %d)" % slot)
        persist.remove(self._path(slot))
        return None

    def step(self):
        # Call once per ADC block: works on the next obfuscator for about step_ms (one exponent
        # bit, at most two multiplications, past the budget), so sampling waits that long at most.
        if len(self.ready) >= _POOL:
            return
        if self.work is None:
            self.work = paillier.Obfuscator(self.hs, self.n, self.exp_bits,
                                            paillier.draw_exponent(self.exp_bits, self.rand))
        t0 = time.ticks_us()
        w = self.work
        while not w.step(1):
            if time.ticks_diff(time.ticks_us(), t0) >= self.step_us:
                return
        v = w.value()
        self.work = None
        used = [s for s, _ in self.ready]
        slot = 0 if 0 not in used else 1
        h = "%x" % v
        persist.write_atomic(self._path(slot), h + " " + str(_crc(h)))
        self.ready.append((slot, v))

    def _take(self):
        if not self.ready:
            # Only when two seals come faster than one obfuscator (first boot, a long outage
            # sealed at once): a stall, counted and logged rather than a lost reading.
            self.e2e_stalls += 1
            self.log("e2e: no obfuscator ready, computing one now")
            return paillier.obfuscator_now(self.hs, self.n, self.exp_bits,
                                           paillier.draw_exponent(self.exp_bits, self.rand))
        slot, v = self.ready.pop(0)
        persist.remove(self._path(slot))  # gone from flash before it is used
        persist.remove(self._path(slot) + ".tmp")
        return v

    def heap_report(self, r):
        r["e2e_stalls"] = self.e2e_stalls

    def seal(self, keys, header, fields, iv):
        return e2e.seal(keys, self.household_keys, header, fields, self.n, self._take(), iv)
