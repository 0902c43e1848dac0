"""SSH keys and server probes for the test fleet and the benchmark's sshd.

No pytest here: `bench/sshd.py` runs in the benchmark's own venv, which has none.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def generate_key(private_path: Path, comment: str, kind: str = "ed25519") -> str:
    """Write an unencrypted private key (0600) and its .pub; return the public line "TYPE BASE64".

    ed25519 and ecdsa are written in OpenSSH's format, rsa in the legacy PEM format, so both
    loaders of the transport get exercised.
    """
    if kind == "ed25519":
        key, fmt = Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH
    elif kind == "ecdsa":
        key, fmt = ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.OpenSSH
    elif kind == "rsa":
        key, fmt = rsa.generate_private_key(public_exponent=65537, key_size=2048), serialization.PrivateFormat.TraditionalOpenSSL
    else:
        raise ValueError(f"unknown key kind {kind!r}")
    private = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    Path(f"{private_path}.pub").write_text(f"{public} {comment}\n")
    return public


def read_banner(address: str, port: int, timeout: float = 1.0) -> Optional[bytes]:
    """The first bytes a server on address:port sends, or None when nothing accepts there."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            return sock.recv(64)
    except OSError:
        return None
