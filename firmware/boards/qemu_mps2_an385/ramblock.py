# Flash for the QEMU board: littlefs on a RAM block device in the MPS2's second SSRAM bank
# (0x20000000, 4 MB, never used by the firmware image, stack or GC heap). A soft reset clears the
# heap but not this bank, so files survive a reboot the way flash does; the bytes are not counted
# in the 64 KB heap. cut_after(n) simulates a power cut: the n-th block program is torn halfway and
# every later write is lost, as if the supply had dropped; the next boot sees what flash would hold.
import uctypes
import vfs

BASE = 0x20000000
BLOCK = 4096
COUNT = 128  # 512 KB, the size of a meter's data partition


class PowerCut(OSError):
    pass


class RamBlock:
    def __init__(self, base=BASE, block=BLOCK, count=COUNT):
        self.mem = memoryview(uctypes.bytearray_at(base, block * count))
        self.block = block
        self.count = count
        self.writes = 0
        self.cut_at = 0  # 0: no cut armed

    def readblocks(self, n, buf, off=0):
        a = n * self.block + off
        buf[:] = self.mem[a:a + len(buf)]

    def writeblocks(self, n, buf, off=0):
        if self.cut_at and self.writes >= self.cut_at:
            raise PowerCut(5, "power cut")  # EIO: nothing reaches flash after the cut
        self.writes += 1
        a = n * self.block + off
        if self.cut_at and self.writes == self.cut_at:
            half = len(buf) // 2
            self.mem[a:a + half] = buf[:half]  # a torn program: first half written
            raise PowerCut(5, "power cut")
        self.mem[a:a + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.count
        if op == 5:  # block size
            return self.block
        if op == 6:  # erase: littlefs programs whole blocks after it, nothing to do in RAM
            return 0
        return None


dev = None


def mount(path="/flash", fresh=False):
    """Mount the RAM flash at path (format it if empty or fresh) and make it the cwd."""
    global dev
    try:
        vfs.umount(path)  # a second mount (fresh=True after the prelude's) replaces the first
    except OSError:
        pass
    dev = RamBlock()
    if fresh:
        vfs.VfsLfs2.mkfs(dev)
    try:
        fs = vfs.VfsLfs2(dev)
    except OSError:
        vfs.VfsLfs2.mkfs(dev)
        fs = vfs.VfsLfs2(dev)
    vfs.mount(fs, path)
    import os
    os.chdir(path)
    return dev


def cut_after(n):
    """Arm a power cut at the n-th block write from now."""
    dev.cut_at = dev.writes + n
