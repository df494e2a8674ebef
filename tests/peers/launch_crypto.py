"""Epic launch-token crypto with Python's `cryptography` (an AES implementation Switchboard did
not write), to cross-check Switchboard's in both directions.

usage: launch_crypto.py encrypt|decrypt KEY IV_MODE DATA
  KEY      base64 of 32 bytes (AES-256-CBC) or `password:<text>` (legacy AES-128, CryptDeriveKey/SHA-1)
  IV_MODE  zero | prefixed (AES-256 only; legacy always uses a zero IV)
  DATA     plaintext to encrypt, or base64 to decrypt
"""
import base64
import hashlib
import os
import sys

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def key_from(arg: str) -> tuple[bytes, bool]:
    if arg.startswith("password:"):
        h = hashlib.sha1(arg[len("password:"):].encode()).digest()
        inner = bytes(b ^ 0x36 for b in h.ljust(64, b"\0")[:20]) + bytes([0x36] * 44)
        outer = bytes(b ^ 0x5C for b in h.ljust(64, b"\0")[:20]) + bytes([0x5C] * 44)
        derived = hashlib.sha1(inner).digest() + hashlib.sha1(outer).digest()
        return derived[:16], True
    return base64.b64decode(arg), False


def main() -> None:
    op, key_arg, iv_mode, data = sys.argv[1:5]
    key, legacy = key_from(key_arg)
    prefixed = iv_mode == "prefixed" and not legacy
    if op == "encrypt":
        iv = os.urandom(16) if prefixed else bytes(16)
        padder = padding.PKCS7(128).padder()
        padded = padder.update(data.encode()) + padder.finalize()
        enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        body = enc.update(padded) + enc.finalize()
        print(base64.b64encode((iv if prefixed else b"") + body).decode())
    else:
        raw = base64.b64decode(data)
        iv, body = (raw[:16], raw[16:]) if prefixed else (bytes(16), raw)
        dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        padded = dec.update(body) + dec.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        print((unpadder.update(padded) + unpadder.finalize()).decode())


if __name__ == "__main__":
    main()
