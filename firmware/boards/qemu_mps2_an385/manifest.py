# Frozen into the QEMU firmware (MicroPython manifest: include/package/module are its builtins).
include("$(MPY_DIR)/extmod/asyncio")
package("meter", base_path="$(REPO_DIR)/firmware")
package("protocol", files=["__init__.py", "aes.py", "errors.py", "frame.py", "hmac_sha256.py", "opener.py",
                           "selftest.py"], base_path="$(REPO_DIR)")
module("ramblock.py")
