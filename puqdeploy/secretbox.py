"""Customer passwords encrypted at rest with a key file kept beside (not inside) the database.

A copy of the database alone (a backup, a support dump) reveals no password: the 256-bit key
lives in its own 0600 file that `init` creates. The cipher is an AEAD, so a tampered
ciphertext fails loudly. Blob layouts (the version prefix is also the associated data):

- b"v2" + 12-byte nonce + ChaCha20-Poly1305 ciphertext-with-tag: what is written now. Sealed
  by `puqdeploy.chacha` (plain Python: `create` does not import `cryptography`, ~10-18 ms),
  opened by `cryptography`'s ChaCha20Poly1305.
- b"v1" + 12-byte nonce + AES-GCM ciphertext-with-tag: written by earlier versions; still read.
"""

from __future__ import annotations

import base64
import os

from puqdeploy.errors import OperationalError

_V1_AES_GCM = b"v1"
_V2_CHACHA = b"v2"


def create_key_file(path: str) -> bool:
    """Write a fresh random key (0600) unless one exists; True when a key was created."""
    if os.path.exists(path):
        return False
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    key = base64.b64encode(os.urandom(32)) + b"\n"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def load_key(path: str) -> bytes:
    """Read the key file; a missing or malformed key is an operational error naming the file."""
    try:
        with open(path, "rb") as handle:
            key = base64.b64decode(handle.read().strip(), validate=True)
    except FileNotFoundError:
        raise OperationalError(f"key file {path} is missing: run `puqdeploy init`") from None
    except (OSError, ValueError) as exc:
        raise OperationalError(f"key file {path} is unreadable: {exc}") from None
    if len(key) != 32:
        raise OperationalError(f"key file {path} does not hold a 256-bit key")
    return key


class SecretBox:
    """Encrypts and decrypts short secrets with the project's key."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._openers: dict[bytes, object] = {}  # cryptography's AEADs, made on first use

    @classmethod
    def from_file(cls, path: str) -> "SecretBox":
        return cls(load_key(path))

    def encrypt(self, plaintext: str) -> bytes:
        from puqdeploy.chacha import seal

        nonce = os.urandom(12)
        return _V2_CHACHA + nonce + seal(self._key, nonce, plaintext.encode(), _V2_CHACHA)

    def decrypt(self, blob: bytes) -> str:
        version, nonce, body = blob[:2], blob[2:14], blob[14:]
        if version not in (_V1_AES_GCM, _V2_CHACHA):
            raise OperationalError("stored secret has an unknown format")
        opener = self._opener(version)
        from cryptography.exceptions import InvalidTag

        try:
            return opener.decrypt(nonce, body, version).decode()
        except (InvalidTag, ValueError):  # ValueError: cut short (a nonce under 12 bytes)
            raise OperationalError(
                "stored secret cannot be decrypted: wrong key file for this database?") from None

    def _opener(self, version: bytes):
        opener = self._openers.get(version)
        if opener is None:
            from cryptography.hazmat.primitives.ciphers import aead  # lazy: ~10 ms import

            cipher = aead.AESGCM if version == _V1_AES_GCM else aead.ChaCha20Poly1305
            opener = self._openers[version] = cipher(self._key)
        return opener
