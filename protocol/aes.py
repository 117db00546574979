# The one runtime shim: AES-CBC from `cryptolib` on MicroPython, from `cryptography` on CPython.
# Callers pass whole 16-byte blocks (PKCS#7 padding lives here too, identical on both runtimes).

try:
    import cryptolib

    def cbc_encrypt(key, iv, data):
        return cryptolib.aes(key, 2, iv).encrypt(data)

    def cbc_decrypt(key, iv, data):
        return cryptolib.aes(key, 2, iv).decrypt(data)

except ImportError:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    def cbc_encrypt(key, iv, data):
        enc = Cipher(algorithms.AES(bytes(key)), modes.CBC(bytes(iv))).encryptor()
        return enc.update(bytes(data)) + enc.finalize()

    def cbc_decrypt(key, iv, data):
        dec = Cipher(algorithms.AES(bytes(key)), modes.CBC(bytes(iv))).decryptor()
        return dec.update(bytes(data)) + dec.finalize()


def pkcs7_pad(data):
    n = 16 - len(data) % 16
    return bytes(data) + bytes((n,)) * n


def pkcs7_unpad(data):
    # Returns None on bad padding; the caller raises its typed error.
    if not data or len(data) % 16:
        return None
    n = data[-1]
    if n < 1 or n > 16:
        return None
    bad = 0
    for i in range(1, n + 1):
        bad |= data[-i] ^ n
    if bad:
        return None
    return data[:-n]
