"""DNS look-ups with dnspython: does a name resolve to the node's address yet?

Only the SSL and DNS-verification steps import this module (dnspython is slow to import and
never needed on the create/status path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


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
