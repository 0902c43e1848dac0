"""Passwords at rest: the plain-Python ChaCha20-Poly1305 sealer against OpenSSL's, and the box.

`cryptography` (OpenSSL) is the reference: whatever `puqdeploy.chacha.seal` writes must be the
exact bytes `ChaCha20Poly1305.encrypt` writes, for every length class of plaintext and
associated data (empty, under a block, block boundaries, several blocks; Poly1305's 16-byte
padding boundaries).
"""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from puqdeploy.chacha import seal
from puqdeploy.errors import OperationalError
from puqdeploy.secretbox import SecretBox

PLAINTEXT_SIZES = (0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 300, 1000)
AAD_SIZES = (0, 2, 15, 16, 17, 40)


@pytest.mark.parametrize("size", PLAINTEXT_SIZES)
def test_seal_matches_openssl_for_every_length_class(size):
    for aad_size in AAD_SIZES:
        for _ in range(3):
            key, nonce = os.urandom(32), os.urandom(12)
            plaintext, aad = os.urandom(size), os.urandom(aad_size)
            assert seal(key, nonce, plaintext, aad) == ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def test_seal_refuses_bad_key_or_nonce_sizes():
    with pytest.raises(ValueError):
        seal(os.urandom(16), os.urandom(12), b"x")
    with pytest.raises(ValueError):
        seal(os.urandom(32), os.urandom(8), b"x")


def test_box_round_trips_and_never_repeats_a_nonce():
    box = SecretBox(os.urandom(32))
    blobs = [box.encrypt("S3cret-pass") for _ in range(50)]
    assert all(b.startswith(b"v2") for b in blobs)
    assert len({b[2:14] for b in blobs}) == 50 and len(set(blobs)) == 50
    assert {box.decrypt(b) for b in blobs} == {"S3cret-pass"}
    assert box.decrypt(box.encrypt("pässwörd ✓")) == "pässwörd ✓"


def test_box_still_reads_what_earlier_versions_wrote():
    key = os.urandom(32)
    nonce = os.urandom(12)
    v1 = b"v1" + nonce + AESGCM(key).encrypt(nonce, b"Old-pass-1", b"v1")  # the v1 layout
    assert SecretBox(key).decrypt(v1) == "Old-pass-1"


@pytest.mark.parametrize("damage", ["flip", "wrong_key", "prefix", "version_swap", "truncated"])
def test_tampered_or_foreign_secrets_fail_loudly(damage):
    key = os.urandom(32)
    blob = SecretBox(key).encrypt("S3cret-pass")
    if damage == "flip":
        blob = blob[:20] + bytes([blob[20] ^ 1]) + blob[21:]
    elif damage == "prefix":
        blob = b"v9" + blob[2:]
    elif damage == "version_swap":  # the version is authenticated: v2 bytes read as v1 fail
        blob = b"v1" + blob[2:]
    elif damage == "truncated":
        blob = blob[:9]
    box = SecretBox(os.urandom(32) if damage == "wrong_key" else key)
    with pytest.raises(OperationalError) as info:
        box.decrypt(blob)
    assert "S3cret" not in str(info.value)
