# Frozen into the QEMU firmware. A MicroPython manifest: include/package/module are builtins there.
# ruff: noqa: F821
include("$(MPY_DIR)/extmod/asyncio")
package("meter", base_path="$(REPO_DIR)/firmware")
# All of protocol/ (its host-only gen_vectors.py too: never imported on the board, costs only flash).
package("protocol", base_path="$(REPO_DIR)")
module("ramblock.py")
