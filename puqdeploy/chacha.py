"""ChaCha20-Poly1305 sealing (RFC 8439) in plain Python, for the one hot path that encrypts.

`puqdeploy create` must answer a billing hook in well under a second, and it encrypts the
order's password before it commits. Importing `cryptography` costs more than the rest of the
command's own work (~10–18 ms on a small VM: its compiled bindings load OpenSSL), so `create`
seals with this module instead: ChaCha20-Poly1305 is defined on 32-bit additions, XORs and
rotations plus one 130-bit multiply per 16 bytes, which Python's integers do exactly, and a
password is one or two blocks (well under a millisecond).

Only sealing lives here. Opening — the runner, once per step that needs the password — uses
`cryptography`'s ChaCha20Poly1305 (OpenSSL, constant-time tag check), and the tests check that
this module's output equals that implementation's for every length class. Not constant-time:
it runs on the host that holds the key, on the plaintext it was handed, with no oracle an
attacker can time.
"""

from __future__ import annotations

_MASK = 0xFFFFFFFF
_CONSTANTS = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
_P1305 = (1 << 130) - 5
_CLAMP = 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
MAX_PLAINTEXT = 64 * 0xFFFFFFFF  # the 32-bit block counter starts at 1 for the plaintext


def _words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]


def _block(key: list[int], counter: int, nonce: list[int]) -> bytes:
    """One 64-byte ChaCha20 keystream block (RFC 8439 §2.3): 20 rounds, then the input added."""
    state = [*_CONSTANTS, *key, counter, *nonce]
    x = list(state)
    for _ in range(10):  # a column round and a diagonal round each time
        for a, b, c, d in ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
                           (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)):
            x[a] = (x[a] + x[b]) & _MASK
            t = x[d] ^ x[a]
            x[d] = ((t << 16) | (t >> 16)) & _MASK
            x[c] = (x[c] + x[d]) & _MASK
            t = x[b] ^ x[c]
            x[b] = ((t << 12) | (t >> 20)) & _MASK
            x[a] = (x[a] + x[b]) & _MASK
            t = x[d] ^ x[a]
            x[d] = ((t << 8) | (t >> 24)) & _MASK
            x[c] = (x[c] + x[d]) & _MASK
            t = x[b] ^ x[c]
            x[b] = ((t << 7) | (t >> 25)) & _MASK
    return b"".join(((x[i] + state[i]) & _MASK).to_bytes(4, "little") for i in range(16))


def _poly1305(one_time_key: bytes, message: bytes) -> bytes:
    """The Poly1305 tag of `message` (RFC 8439 §2.5)."""
    r = int.from_bytes(one_time_key[:16], "little") & _CLAMP
    s = int.from_bytes(one_time_key[16:32], "little")
    acc = 0
    for i in range(0, len(message), 16):
        acc = (acc + int.from_bytes(message[i:i + 16] + b"\x01", "little")) * r % _P1305
    return ((acc + s) & ((1 << 128) - 1)).to_bytes(16, "little")


def _pad16(data: bytes) -> bytes:
    return b"\0" * (-len(data) % 16)


def seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """ChaCha20-Poly1305 AEAD encryption (RFC 8439 §2.8): ciphertext followed by the 16-byte
    tag — the same bytes as `cryptography`'s `ChaCha20Poly1305(key).encrypt(nonce, plaintext,
    aad)`. `key` is 32 bytes, `nonce` 12 (never reuse one with the same key)."""
    if len(key) != 32 or len(nonce) != 12:
        raise ValueError("ChaCha20-Poly1305 needs a 32-byte key and a 12-byte nonce")
    if len(plaintext) > MAX_PLAINTEXT:
        raise ValueError("plaintext too long for one ChaCha20-Poly1305 message")
    key_words, nonce_words = _words(key), _words(nonce)
    one_time_key = _block(key_words, 0, nonce_words)[:32]
    blocks = (len(plaintext) + 63) // 64
    stream = b"".join(_block(key_words, 1 + i, nonce_words) for i in range(blocks))
    size = len(plaintext)
    ciphertext = (int.from_bytes(plaintext, "little")
                  ^ int.from_bytes(stream[:size], "little")).to_bytes(size, "little")
    mac_data = (aad + _pad16(aad) + ciphertext + _pad16(ciphertext)
                + len(aad).to_bytes(8, "little") + size.to_bytes(8, "little"))
    return ciphertext + _poly1305(one_time_key, mac_data)
