"""Input rules for everything that ends up in a HestiaCP command or a DNS record.

Values reach us from billing hooks and operators, and later travel as argv elements of
`v-*` scripts (bash) on remote nodes. So the rules here are HestiaCP's own (func/main.sh, see
reference/hestia-cli.md) tightened with the DNS rules, and checked *before* anything is written:
a value Hestia would refuse must fail `create` at once (exit 2), not the fifth task an hour later.

Every function is pure, raises `UsageError` with one line naming the offending value (never a
password), and returns the normalized value that callers must store and use from then on.
Only `re` and `os` are imported eagerly; the IDNA codec loads when first needed, and passwords
come from `os.urandom` directly (`secrets` would import random, hashlib and hmac).
"""

from __future__ import annotations

import os
import re
from typing import Callable, Iterable, Sequence

from puqdeploy.errors import UsageError

__all__ = [
    "BUILTIN_RESERVED",
    "HESTIA_RESERVED_USERS",
    "SYSTEM_USERS",
    "derive_username_base",
    "derive_username_set",
    "domain",
    "email",
    "generate_password",
    "mail_localpart",
    "password",
    "quote",
    "service_id",
    "username",
    "vanity_label",
]

_SERVICE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# HestiaCP is_username_format_valid (2-30 chars, letter first, no dots).
_USERNAME = re.compile(r"[a-zA-Z][-_a-zA-Z0-9]{0,28}[a-zA-Z0-9]")
# HestiaCP is_email_format_valid ([[:alnum:]] read as ASCII: the domain part is punycode).
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,63}")
_LOCALPART = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# HestiaCP is_domain_format_valid refuses these characters anywhere in a domain.
_HESTIA_DOMAIN_FORBIDDEN = frozenset("[]!@#$^&*()+={},<>?_/\\\"|'`;%")
# Label separators IDNA treats as a dot (full stop, ideographic, full-width, half-width).
_DOTS = re.compile("[.\u3002\uff0e\uff61]")

#: Names HestiaCP itself refuses for a new user (func/main.sh).
HESTIA_RESERVED_USERS = frozenset(
    "aria aria_log mysql mysql_upgrade ib ib_buffer ddl ddl_recovery performance sudo".split()
)
#: Accounts that already exist on a HestiaCP node. `v-add-user` would answer "exists" (4) for
#: them, which a step could mistake for "already present" and then hand a customer `root`.
SYSTEM_USERS = frozenset(
    """root admin daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc
    gnats nobody nogroup systemd-network systemd-resolve systemd-timesync messagebus syslog _apt
    sshd ntp chrony dovecot dovenull exim debian-exim mail bind named clamav debian-spamd spamd
    nginx apache apache2 www mysql postgres redis memcache ftp proftpd vsftpd hestia hestiaweb
    hestiamail roundcube phpmyadmin phppgadmin snappymail rainloop""".split()
)

#: Labels a Vanity customer may never claim under a parent domain (added to the group's list).
BUILTIN_RESERVED: tuple[str, ...] = (
    "www", "mail", "admin", "ns1", "ns2", "ns3", "ns4", "ns5", "ns6", "ns7", "ns8", "_dmarc",
    "ftp", "webmail", "smtp", "imap", "pop", "pop3", "autodiscover", "autoconfig", "cpanel",
    "panel", "localhost", "api", "mx", "root", "hostmaster", "postmaster", "_domainkey",
    "mta-sts", "_mta-sts", "_smtp._tls",
)

_MAX_USERNAME = 30
_PASSWORD_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def quote(value: object) -> str:
    """The value quoted for a one-line error message: control characters escaped, long ones cut
    (a hostile `--domain` must not be able to forge extra log lines)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > 70:
        return f"{text[:60]!r}... ({len(text)} characters)"
    return repr(text)


def _require_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{what} must be a string, got {type(value).__name__}")
    return value


def service_id(s: str) -> str:
    """The billing system's id: 1-64 of letters, digits, dot, underscore, hyphen."""
    _require_str(s, "service id")
    if not _SERVICE_ID.fullmatch(s):
        raise UsageError(f"invalid service id {quote(s)}: use 1-64 of A-Z a-z 0-9 . _ -")
    return s


def domain(s: str) -> str:
    """A customer domain, normalized: lowercase, no trailing dot, IDN as punycode.

    HestiaCP's character rules first (they are what its scripts will apply), then DNS rules on the
    punycode form, so that what we store is exactly what Hestia and the resolvers will see.
    `www.example.com` is accepted as given: a customer may really want that name.
    """
    _require_str(s, "domain")
    name = s.strip()
    if not name:
        raise UsageError("invalid domain '': it is empty")
    shown = quote(name)
    if any(ch.isspace() for ch in name) or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise UsageError(f"invalid domain {shown}: contains whitespace or control characters")
    bad = sorted({ch for ch in name if ch in _HESTIA_DOMAIN_FORBIDDEN})
    if bad:
        raise UsageError(f"invalid domain {shown}: contains {' '.join(bad)}")
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if ".." in name:
        raise UsageError(f"invalid domain {shown}: contains '..'")
    if name.startswith((".", "-")) or name.endswith((".", "-")):
        raise UsageError(f"invalid domain {shown}: starts or ends with '.' or '-'")
    if name == "www":
        raise UsageError(f"invalid domain {shown}: bare 'www'")
    if name.isdigit():
        raise UsageError(f"invalid domain {shown}: all digits")
    labels = [_to_ascii_label(label, shown) for label in _DOTS.split(name)]
    if len(labels) < 2:
        raise UsageError(f"invalid domain {shown}: needs at least two labels (like example.com)")
    for label in labels:
        if not label:
            raise UsageError(f"invalid domain {shown}: empty label")
        if len(label) > 63:
            raise UsageError(f"invalid domain {shown}: label longer than 63 characters")
        if not _LABEL.fullmatch(label):
            raise UsageError(
                f"invalid domain {shown}: label {quote(label)} must be letters, digits and "
                "hyphens, not starting or ending with a hyphen"
            )
    if labels[-1].isdigit():
        raise UsageError(f"invalid domain {shown}: the top-level label is all digits")
    result = ".".join(labels)
    if len(result) > 253:
        raise UsageError(f"invalid domain {shown}: longer than 253 characters")
    return result


def _to_ascii_label(label: str, shown: str) -> str:
    """One label as punycode (IDNA 2003, the stdlib's codec); ASCII labels pass unchanged."""
    if label.isascii() and not label.startswith("xn--"):
        return label
    from encodings import idna  # lazy: only IDN names need nameprep/punycode

    if label.isascii():  # already punycode: it must decode to a real IDN label and back
        try:
            unicode_label = label[4:].encode("ascii").decode("punycode")
            ok = not unicode_label.isascii() and _idna_ascii(idna, unicode_label) == label
        except UnicodeError:
            ok = False
        if not ok:
            raise UsageError(f"invalid domain {shown}: bad punycode label {quote(label)}")
        return label
    try:
        result = _idna_ascii(idna, label)
    except UnicodeError as exc:
        raise UsageError(f"invalid domain {shown}: cannot convert {quote(label)} to IDNA ({exc})")
    if not result.startswith("xn--"):
        # nameprep dropped or mapped every non-ASCII character (a soft hyphen, full-width
        # letters): the name we would store is not the one the customer typed.
        raise UsageError(f"invalid domain {shown}: label {quote(label)} has invisible or "
                         "look-alike characters")
    return result


def _idna_ascii(idna, label: str) -> str:
    return idna.ToASCII(label).decode("ascii").lower()


def username(s: str) -> str:
    """A new HestiaCP user name (2-30, letter first, [-_a-zA-Z0-9]), returned in lowercase.

    Besides Hestia's own reserved names we refuse common system accounts: `v-add-user` would say
    "exists", and an idempotent step must never adopt `root` as the customer's user.
    """
    _require_str(s, "username")
    if not _USERNAME.fullmatch(s):
        raise UsageError(
            f"invalid username {quote(s)}: 2-30 characters, a letter first, then letters, digits,"
            " '-' or '_', ending with a letter or digit"
        )
    name = s.lower()
    if name in HESTIA_RESERVED_USERS or name in SYSTEM_USERS or name.startswith("systemd-"):
        raise UsageError(f"invalid username {quote(s)}: reserved for the system")
    return name


def email(s: str) -> str:
    """An e-mail address by HestiaCP's rule; surrounding spaces removed, domain lowercased."""
    _require_str(s, "email")
    value = s.strip()
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise UsageError(f"invalid email {quote(s)}")
    local, _, host = value.rpartition("@")
    return f"{local}@{host.lower()}"


def mail_localpart(s: str) -> str:
    """A mailbox name (the part before @): 1-64 of [A-Za-z0-9_.-], returned lowercase.

    Dots at either end or doubled are refused too: HestiaCP would create the account, but no
    mail server would deliver to it (RFC 5321 dot-atom).
    """
    _require_str(s, "mailbox name")
    if not _LOCALPART.fullmatch(s):
        raise UsageError(f"invalid mailbox name {quote(s)}: use 1-64 of A-Z a-z 0-9 _ . -")
    if s.startswith(".") or s.endswith(".") or ".." in s:
        raise UsageError(f"invalid mailbox name {quote(s)}: no leading, trailing or double dot")
    return s.lower()


def vanity_label(s: str, reserved: Iterable[str] = ()) -> str:
    """The customer's own label under a Vanity parent (`shop` in shop.example.net), lowercase.

    `reserved` is the group's list; BUILTIN_RESERVED is always added, so a customer can never
    take over mail., www., the name servers or the records mail and TLS policies depend on.
    """
    _require_str(s, "name")
    label = s.strip().lower()
    if not _LABEL.fullmatch(label):
        raise UsageError(
            f"invalid name {quote(s)}: 1-63 lowercase letters, digits and hyphens, "
            "not starting or ending with a hyphen"
        )
    taken = {r.lower() for r in reserved}
    if label in taken or label in BUILTIN_RESERVED:
        raise UsageError(f"name {quote(label)} is reserved")
    return label


def password(s: str) -> str:
    """A customer password by HestiaCP's web-UI rule: >= 8 characters, lower, upper and digit.

    The message never repeats the password. Newlines, carriage returns and NUL are refused:
    Hestia reads the first line of a file, so they would silently change the password.
    """
    if not isinstance(s, str):
        raise UsageError("password must be a string")
    if any(ch in s for ch in "\n\r\0"):
        raise UsageError("password must not contain a line break or NUL character")
    if len(s) < 8:
        raise UsageError("password must be at least 8 characters")
    if len(s) > 256:
        raise UsageError("password must be at most 256 characters")
    if not (_has_lower(s) and _has_upper(s) and _has_digit(s)):
        raise UsageError("password needs a lowercase letter, an uppercase letter and a digit")
    return s


# ASCII classes, as in the web UI's regex: an "Ä" does not count as an uppercase letter there.
def _has_lower(s: str) -> bool:
    return any("a" <= ch <= "z" for ch in s)


def _has_upper(s: str) -> bool:
    return any("A" <= ch <= "Z" for ch in s)


def _has_digit(s: str) -> bool:
    return any("0" <= ch <= "9" for ch in s)


def generate_password() -> str:
    """A strong password (20 letters/digits, ~119 bits) that satisfies `password()`.

    No punctuation, so it survives every shell, URL and e-mail template it may be pasted into.
    """
    while True:
        candidate = _random_string(_PASSWORD_ALPHABET, 20)
        if _has_lower(candidate) and _has_upper(candidate) and _has_digit(candidate):
            return candidate


def _random_string(alphabet: str, length: int) -> str:
    """`length` characters drawn uniformly from `alphabet` with the OS's CSPRNG.

    os.urandom directly rather than `secrets`, which imports random, hashlib and hmac (~5 ms
    of every `create`); bytes at or above the largest multiple of len(alphabet) are dropped,
    so every character is equally likely (no modulo bias).
    """
    size = len(alphabet)
    usable = 256 - 256 % size
    chars: list[str] = []
    while len(chars) < length:
        chars += [alphabet[b % size] for b in os.urandom(2 * length) if b < usable]
    return "".join(chars[:length])


def derive_username_base(domain: str, suffix: str, taken: Callable[[str], bool]) -> str:
    """The full user name for one role: `example.com` + `-web` -> `examplecom-web`.

    See `derive_username_set`; this is the one-suffix case.
    """
    return derive_username_set(domain, (suffix,), taken)[suffix]


def derive_username_set(
    domain: str, suffixes: Sequence[str], taken: Callable[[str], bool]
) -> dict[str, str]:
    """User names for several roles that share ONE base: {suffix: base + suffix}.

    The base is the domain's ASCII letters and digits (`u` prefixed if it would not start with a
    letter), cut so the longest suffix still fits Hestia's 30 characters. If any of the names is
    taken (or reserved), a number goes before the suffix (`examplecom2-web`), cutting the base
    further, until a base is free for every suffix — so Split's -web/-mail/-dns users always
    belong visibly together.
    """
    if not suffixes:
        raise ValueError("derive_username_set needs at least one suffix")
    for suffix in suffixes:
        if not isinstance(suffix, str) or not re.fullmatch(r"(?:[-_a-z0-9]*[a-z0-9])?", suffix):
            raise ValueError(f"bad username suffix {suffix!r}")
    stem = "".join(ch for ch in domain.lower() if ch.isascii() and ch.isalnum())
    if not stem or not stem[0].isalpha():
        stem = "u" + stem
    room = _MAX_USERNAME - max(len(s) for s in suffixes)
    if room < 2:
        raise ValueError("username suffix too long")
    for number in range(1, 100000):
        tag = "" if number == 1 else str(number)
        base = stem[: max(1, room - len(tag))] + tag
        if len(base) + min(len(s) for s in suffixes) < 2:
            base = (base + "0")[:room]  # a one-letter stem with no suffix: Hestia needs 2 chars
        names = {suffix: base + suffix for suffix in suffixes}
        if all(_usable(name) and not taken(name) for name in names.values()):
            return names
    raise UsageError(f"no free username derived from {quote(domain)}; pass --username")


def _usable(name: str) -> bool:
    """True when `name` passes `username()` unchanged (format and reserved lists)."""
    try:
        return username(name) == name
    except UsageError:
        return False
