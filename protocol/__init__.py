# meterveil wire protocol v1: one source tree for MicroPython (meters) and CPython (gateway).
# Kept tiny on purpose: importing the package costs a board nothing; import the modules you need
# (frame, errors, hmac_sha256, aes) directly.
PROTOCOL_VERSION = 1
