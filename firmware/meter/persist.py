# Small crash-safe state files on flash: atomic replace, a frame counter that never repeats,
# and a boot counter. Shared by outbox.py and app.py; runs on MicroPython and CPython.
import os

try:
    from micropython import const
except ImportError:  # CPython (tests)
    def const(x):
        return x

_COUNTER_BLOCK = const(64)  # counters reserved per flash write: one write per 64 frames


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def makedirs(path):
    # os.makedirs does not exist on MicroPython.
    cur = "/" if path.startswith("/") else ""
    for part in path.split("/"):
        if not part:
            continue
        cur += part
        if not exists(cur):
            os.mkdir(cur)
        cur += "/"


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def write_atomic(path, text):
    # Write a temp file, then rename over the target: a power cut leaves the old or the new
    # content, never half of either (POSIX and littlefs rename are atomic). FAT cannot rename
    # over an existing file: remove first; read_atomic then falls back to the complete temp file.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    try:
        os.rename(tmp, path)
    except OSError:
        remove(path)
        os.rename(tmp, path)


def read_atomic(path):
    # Text of the file, or of its complete temp twin (FAT window), or None.
    for p in (path, path + ".tmp"):
        try:
            with open(p) as f:
                return f.read()
        except OSError:
            pass
    return None


def read_ints(path, count):
    # A line of `count` decimal ints; None if absent or unparsable (treated as first boot).
    text = read_atomic(path)
    if text is None:
        return None
    parts = text.split()
    if len(parts) != count:
        return None
    try:
        return [int(p) for p in parts]
    except ValueError:
        return None


def write_ints(path, values):
    write_atomic(path, " ".join(str(v) for v in values) + "\n")


class FrameCounter:
    # Frame counters must never repeat, even across power loss (the gateway drops replays).
    # The file holds an upper bound: every counter below it may have been used. Before a counter
    # at or above the bound is handed out, the bound moves _COUNTER_BLOCK ahead on flash first. A
    # reboot resumes at the stored bound, skipping at most one block of unused counters.
    def __init__(self, path, block=_COUNTER_BLOCK):
        self.path = path
        self.block = block
        vals = read_ints(path, 1)
        start = vals[0] if vals else 1
        if start < 1:
            start = 1
        self._next = start
        self._limit = start

    def take(self):
        if self._next >= self._limit:
            self._limit = self._next + self.block
            write_ints(self.path, (self._limit,))
        c = self._next
        self._next += 1
        return c

    def peek(self):
        return self._next

    def raise_to(self, floor):
        # Skip ahead (never back): see Meter._header, counters across a board replacement.
        if floor > self._next:
            self._next = floor


def bump_boot_count(path):
    vals = read_ints(path, 1)
    n = (vals[0] if vals else 0) + 1
    write_ints(path, (n,))
    return n
