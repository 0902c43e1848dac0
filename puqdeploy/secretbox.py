"""Customer passwords encrypted at rest with a key file kept beside (not inside) the database.

A copy of the database alone (a backup, a support dump) reveals no password: the 256-bit key
lives in its own 0600 file that `init` creates. AES-GCM (from `cryptography`, which paramiko
already needs) authenticates as well as encrypts, so a tampered ciphertext fails loudly.
Blob layout: b"v1" + 12-byte nonce + ciphertext-with-tag; the version prefix allows rotation.
"""

from __future__ import annotations

import base64
import os

from puqdeploy.errors import OperationalError

_PREFIX = b"v1"


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
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # lazy: ~9 ms import

        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: str) -> "SecretBox":
        return cls(load_key(path))

    def encrypt(self, plaintext: str) -> bytes:
        nonce = os.urandom(12)
        return _PREFIX + nonce + self._aead.encrypt(nonce, plaintext.encode(), _PREFIX)

    def decrypt(self, blob: bytes) -> str:
        if not blob.startswith(_PREFIX):
            raise OperationalError("stored secret has an unknown format")
        nonce, body = blob[2:14], blob[14:]
        try:
            return self._aead.decrypt(nonce, body, _PREFIX).decode()
        except Exception:
            raise OperationalError(
                "stored secret cannot be decrypted: wrong key file for this database?") from None
