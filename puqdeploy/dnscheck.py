"""DNS look-ups with dnspython: does a name resolve to the node's address yet, and does each DNS
node serve the zone authoritatively?

Only the SSL and DNS-verification steps import this module, and dnspython only inside the
functions: it is slow to import and never needed on the create/status path.

Two kinds of question, two kinds of query:
- `resolve_a` asks the configured resolvers, the way Let's Encrypt will see the name.
- `query_authoritative` / `verify_zone` ask one DNS node directly, without recursion, and trust
  only answers carrying the `aa` flag: a node that lost the zone (or never loaded it) answers
  REFUSED or without `aa`, which a recursive look-up would hide behind another server's answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class Resolution:
    """What the configured resolvers said about one name."""

    name: str
    addresses: tuple[str, ...]
    error: str | None = None


def resolve_a(name: str, resolvers: Sequence[str], port: int = 53, timeout: float = 3.0) -> Resolution:
    """A records of `name` through the given resolvers (no system resolver, no caching)."""
    import dns.exception
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = list(resolvers)
    resolver.port = port
    resolver.timeout = timeout
    resolver.lifetime = timeout
    resolver.cache = None
    try:
        answer = resolver.resolve(name, "A", search=False)
    except dns.resolver.NXDOMAIN:
        return Resolution(name, (), "does not exist (NXDOMAIN)")
    except dns.resolver.NoAnswer:
        return Resolution(name, (), "has no A record")
    except dns.resolver.NoNameservers as exc:
        return Resolution(name, (), f"no resolver answered ({exc})")
    except dns.exception.Timeout:
        return Resolution(name, (), "look-up timed out")
    except dns.exception.DNSException as exc:
        return Resolution(name, (), f"look-up failed: {exc}")
    return Resolution(name, tuple(sorted(rr.address for rr in answer)))


def points_at(resolution: Resolution, address: str) -> bool:
    """True when every A record of the name is the node's address (no stale second record)."""
    return bool(resolution.addresses) and set(resolution.addresses) == {address}


# --------------------------------------------------------------------------- authoritative

@dataclass(frozen=True)
class AuthAnswer:
    """One server's direct answer to one question.

    `error` is set (and `rcode` empty) when the server did not answer at all: timed out,
    refused the connection, or sent something unparsable. Otherwise `rcode` is the DNS
    response code ("NOERROR", "NXDOMAIN", "REFUSED", "SERVFAIL", ...), `authoritative` the
    `aa` flag, and `answers` the rdata (as zone-file text) of the answer records whose name
    and type are the question's. `tcp` tells that the UDP answer was truncated and the
    question was asked again over TCP (long TXT records, large RRsets)."""

    server: str
    port: int
    name: str  # absolute, with the trailing dot
    rdtype: str
    rcode: str = ""
    authoritative: bool = False
    answers: tuple[str, ...] = ()
    ttl: Optional[int] = None
    tcp: bool = False
    error: Optional[str] = None

    @property
    def answered(self) -> bool:
        return self.error is None

    @property
    def ok(self) -> bool:
        """An authoritative NOERROR answer (possibly with no records of the type)."""
        return self.error is None and self.rcode == "NOERROR" and self.authoritative

    @property
    def serial(self) -> Optional[int]:
        """The SOA serial, for an SOA question that got an SOA record back."""
        if self.rdtype != "SOA" or not self.answers:
            return None
        fields = self.answers[0].split()
        return int(fields[2]) if len(fields) >= 7 and fields[2].isdigit() else None

    def describe(self) -> str:
        """One line for a problem report: what the server did."""
        if self.error is not None:
            return f"server {self.server}:{self.port} is not answering ({self.error})"
        flags = "authoritative" if self.authoritative else "not authoritative"
        return f"{self.rcode}, {flags}"


def absolute_name(zone: str, name: str) -> str:
    """`name` as in a zone file of `zone`: "@" or "" is the apex, a trailing dot makes it
    absolute, anything else is relative to the zone ("www", "mail._domainkey") — the way
    HestiaCP stores record names. Returned lowercase with the trailing dot."""
    zone = zone.rstrip(".").lower()
    name = name.strip()
    if name in ("", "@"):
        full = zone
    elif name.endswith("."):
        full = name[:-1]
    else:
        full = f"{name}.{zone}"
    return full.lower() + "."


def query_authoritative(server: str, port: int, zone: str, name: str, rdtype: str,
                        timeout: float) -> AuthAnswer:
    """Ask `server` (an IP address) directly for `name`/`rdtype`, recursion not desired.

    UDP first, TCP when the answer comes back truncated; `timeout` applies to each of the
    two. Never raises for network trouble: a silent or refusing server comes back as an
    AuthAnswer with `error` set, so callers can tell "not answering" from "answering wrong".
    `name` is relative to `zone` unless it ends with a dot (see `absolute_name`)."""
    import dns.exception
    import dns.flags
    import dns.message
    import dns.name
    import dns.query
    import dns.rcode
    import dns.rdatatype

    qname_text = absolute_name(zone, name)
    rdtype = rdtype.upper()
    base = dict(server=server, port=port, name=qname_text, rdtype=rdtype)
    try:
        qname = dns.name.from_text(qname_text)
        qtype = dns.rdatatype.from_text(rdtype)
    except (dns.exception.DNSException, ValueError) as exc:
        return AuthAnswer(**base, error=f"invalid question: {exc}")
    query = dns.message.make_query(qname, qtype)
    query.flags &= ~dns.flags.RD
    try:
        response, used_tcp = dns.query.udp_with_fallback(query, server, timeout=timeout,
                                                         port=port)
    except dns.exception.Timeout:
        return AuthAnswer(**base, error=f"timed out after {timeout:g} s")
    except ConnectionRefusedError:
        return AuthAnswer(**base, error="connection refused")
    except OSError as exc:
        return AuthAnswer(**base, error=exc.strerror or str(exc))
    except dns.exception.DNSException as exc:
        return AuthAnswer(**base, error=f"bad response: {exc}")
    answers: list[str] = []
    ttl = None
    for rrset in response.answer:
        if rrset.name == qname and rrset.rdtype == qtype:
            answers.extend(rdata.to_text() for rdata in rrset)
            ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
    return AuthAnswer(**base, rcode=dns.rcode.to_text(response.rcode()),
                      authoritative=bool(response.flags & dns.flags.AA),
                      answers=tuple(answers), ttl=ttl, tcp=used_tcp)


def verify_zone(server: str, port: int, zone: str, expected: Sequence[tuple[str, str, str]],
                timeout: float, *, min_serial: Optional[int] = None) -> list[str]:
    """Problems with `zone` as `server` serves it; an empty list means it is served right.

    The server must answer the zone's SOA authoritatively (NOERROR with `aa`), and for each
    expected ``(name, type, value)`` answer authoritatively with a record of that value among
    its records (other records of the same name and type are allowed: Hestia's templates add
    their own). A server that does not answer at all yields one problem that says so and no
    others. With `min_serial` (the panel's SERIAL after the last change), an older served
    serial is a problem too: a reload returns before named has loaded the zone, so right
    after a change a server may still serve the previous version for a moment — callers
    should treat that as "retry shortly", not as a failure. Names follow `absolute_name`; values are compared as DNS data, not as text:
    - TXT/SPF: the strings joined, so a 2048-bit DKIM key split into 255-byte pieces matches
      the one-line value; a value in double quotes is read as zone-file text (so Hestia's
      stored ``"v=DKIM1\\; k=rsa\\; p=..."`` works), any other value is taken literally;
    - MX "HOST" or "PRIO HOST", SRV "WEIGHT PORT TARGET" or "PRIO WEIGHT PORT TARGET"
      (Hestia keeps the priority apart): the given fields must match;
    - names in values are absolute with or without the trailing dot (Hestia adds it), in any
      case; addresses in any notation (``2001:db8::1`` = ``2001:0db8:0:0:0:0:0:1``)."""
    problems: list[str] = []
    soa = query_authoritative(server, port, zone, "@", "SOA", timeout)
    if not soa.answered:
        return [f"{zone}: {soa.describe()}"]
    if not soa.ok or not soa.answers:
        what = soa.describe() if not soa.ok else "NOERROR but no SOA record"
        return [f"{zone}: SOA not served authoritatively by {server}:{port} ({what})"]
    if min_serial is not None and (soa.serial or 0) < min_serial:
        problems.append(f"{zone}: {server}:{port} serves serial {soa.serial}, older than "
                        f"{min_serial} (reload not done yet?)")
    wanted: dict[tuple[str, str], list[str]] = {}
    for name, rdtype, value in expected:
        wanted.setdefault((absolute_name(zone, name), rdtype.upper()), []).append(value)
    for (fqdn, rdtype), values in wanted.items():
        answer = query_authoritative(server, port, zone, fqdn, rdtype, timeout)
        if not answer.answered:
            problems.append(f"{fqdn} {rdtype}: {answer.describe()}")
            return problems  # it stopped answering: the rest would say the same
        if not answer.ok:
            problems.append(f"{fqdn} {rdtype}: not served authoritatively ({answer.describe()})")
            continue
        for value in values:
            if not _served(rdtype, value, answer.answers):
                served = "; ".join(answer.answers) or "no records of this type"
                problems.append(f"{fqdn} {rdtype}: expected {value!r}, served: {served}")
    return problems


def _served(rdtype: str, value: str, answers: Sequence[str]) -> bool:
    """Is `value` among `answers` (rdata text as the server sent it), as DNS data?"""
    import dns.exception
    import dns.name
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    def parse(text: str):
        try:
            return dns.rdata.from_text(dns.rdataclass.IN, rdtype, text, origin=dns.name.root,
                                       relativize=False)
        except (dns.exception.DNSException, ValueError):
            return None

    served = [rdata for rdata in (parse(text) for text in answers) if rdata is not None]
    if rdtype in ("TXT", "SPF"):
        want = _txt_bytes(value)
        return want is not None and any(b"".join(r.strings) == want for r in served)
    fields = value.split()
    try:
        if rdtype == "MX" and len(fields) == 1:
            target = dns.name.from_text(fields[0], origin=dns.name.root)
            return any(r.exchange == target for r in served)
        if rdtype == "SRV" and len(fields) == 3 and fields[0].isdigit() and fields[1].isdigit():
            target = dns.name.from_text(fields[2], origin=dns.name.root)
            return any((r.weight, r.port, r.target) == (int(fields[0]), int(fields[1]), target)
                       for r in served)
    except dns.exception.DNSException:
        return False
    want_rdata = parse(value)
    if want_rdata is None:
        return value.strip().rstrip(".").lower() in {a.rstrip(".").lower() for a in answers}
    return want_rdata in served


def _txt_bytes(value: str) -> Optional[bytes]:
    """The TXT data `value` stands for, strings joined: zone-file text when it starts with a
    double quote (one string may be longer than 255 bytes here: it is what the zone holds
    before the split), else the literal text (Hestia's ``\\;`` read as ``;``)."""
    import dns.exception
    import dns.tokenizer

    text = value.strip()
    if not text.startswith('"'):
        return text.replace("\\;", ";").encode()
    try:
        tokenizer = dns.tokenizer.Tokenizer(text)
        parts = []
        while True:
            token = tokenizer.get()
            if token.is_eol_or_eof():
                return b"".join(parts)
            if not (token.is_quoted_string() or token.is_identifier()):
                return None
            parts.append(token.unescape_to_bytes().value)
    except (dns.exception.DNSException, UnicodeError):
        return None
