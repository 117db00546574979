# meterveil's QEMU board: MicroPython's MPS2_AN385 (Cortex-M3, 32-bit, float32) plus what the
# meter needs and the stock qemu port leaves out. Built out of tree by the repo's `make qemu`:
#   make -C <micropython>/ports/qemu BOARD=MPS2_AN385 BOARD_DIR=<this dir> BUILD=<repo>/build/qemu/fw
include $(TOP)/ports/qemu/boards/MPS2_AN385/mpconfigboard.mk

# A 64 KB GC heap: the budget the firmware is held to (docs/FIRMWARE.md).
MICROPY_HEAP_SIZE = 65536

# include/ comes first on the include path: its mpconfigport.h wraps the port's (asyncio on).
CFLAGS += -I$(BOARD_DIR)/include

# cryptolib (AES-128-CBC for sealing) from axTLS, without TLS: only aes.c is compiled, so the TLS
# stack and its malloc-based RSA code are never linked. No network on this board anyway.
CFLAGS += -DMICROPY_SSL_AXTLS=1 -DMICROPY_PY_CRYPTOLIB=1
CFLAGS += -I$(TOP)/lib/axtls/ssl -I$(TOP)/lib/axtls/crypto -I$(TOP)/extmod/axtls-include
SRC_THIRDPARTY_C += lib/axtls/crypto/aes.c
$(BUILD)/lib/axtls/%.o: CFLAGS += -Wno-all -Wno-unused-parameter -Wno-sign-compare

# littlefs for the outbox's flash filesystem (a RAM block device here, see ramblock.py).
MICROPY_VFS_LFS2 = 1

# Frozen: asyncio, meter/ and protocol/ compiled by mpy-cross from this same source tree.
FROZEN_MANIFEST = $(BOARD_DIR)/manifest.py
MICROPY_MANIFEST_REPO_DIR = $(abspath $(BOARD_DIR)/../../..)
# The manifest needs no micropython-lib; point its presence check at a file that exists.
MPY_LIB_DIR = $(TOP)
