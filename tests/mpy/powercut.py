# Runs the real firmware main.py with a power cut injected at the N-th reading's outbox append:
#   micropython powercut.py before|after N CONFIG --storage DIR
# before: the process ends just before the record is written; after: just after it is durable
# (before the state file and the checkpoint move). Exit code 9 marks the cut.
import sys

from meter import outbox

mode, n = sys.argv[1], int(sys.argv[2])
rest = sys.argv[3:]
sys.argv[:] = ["main.py"] + rest
_append = outbox.Outbox.append
_seen = [0]


def append(self, frame):
    if frame[3] == 1:  # a reading
        _seen[0] += 1
        if _seen[0] == n:
            if mode == "after":
                _append(self, frame)
            print("POWERCUT", mode, n)
            sys.exit(9)
    return _append(self, frame)


outbox.Outbox.append = append
import main  # noqa: E402 - the meter's entry module (runs only as __main__)

main.mount_romfs(sys.argv)
sys.exit(main.main(sys.argv))
