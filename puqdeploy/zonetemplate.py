"""DNS zone content from a template file with placeholders.

The template is data, not code, so a provider can ship its own per product or group. A record
that references a placeholder with no value is skipped rather than written half-empty: {ns3}
when the group has two nameservers, {domainkey} when the service has no mail.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Mapping, Optional

from puqdeploy.errors import UsageError

DEFAULT_TEMPLATE = os.path.join(os.path.dirname(__file__), "templates", "dns-default.tpl")
_PLACEHOLDER = re.compile(r"\{([a-z_0-9]+)\}")
_WITH_PRIORITY = frozenset({"MX", "SRV"})
KNOWN_TYPES = frozenset({"A", "AAAA", "CNAME", "MX", "NS", "TXT", "SRV", "CAA", "PTR", "DNSKEY",
                         "KEY", "IPSECKEY", "TLSA", "SSHFP", "SPF"})


@dataclass(frozen=True)
class Record:
    """One zone record as HestiaCP's v-add-dns-record takes it."""

    name: str
    type: str
    value: str
    priority: str = ""

    def key(self) -> tuple[str, str, str, str]:
        """Identity used to tell whether the zone already holds this record."""
        return record_key(self.name, self.type, self.value, self.priority)


def record_key(name: str, rtype: str, value: str, priority: str = "") -> tuple[str, str, str, str]:
    """Normalise a record the way HestiaCP stores it (quotes on TXT, trailing dots)."""
    rtype = rtype.upper()
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    value = value.replace("\\;", ";").replace("%quote%", "'")  # HestiaCP's own escapes
    if rtype != "TXT":
        value = value.rstrip(".").lower()
    return (name.lower().rstrip(".") or "@", rtype, value, str(priority or "").strip())


@dataclass(frozen=True)
class TemplateLine:
    name: str
    type: str
    priority: str
    value: str
    line_no: int


def parse_template(text: str, source: str = "<template>") -> list[TemplateLine]:
    """Parse template text; errors name the file and line."""
    lines: list[TemplateLine] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 3:
            raise UsageError(f"{source}:{number}: expected NAME TYPE VALUE, got {line!r}")
        name, rtype, rest = parts[0], parts[1].upper(), parts[2].strip()
        if rtype not in KNOWN_TYPES:
            raise UsageError(f"{source}:{number}: unknown record type {parts[1]!r}")
        priority = ""
        if rtype in _WITH_PRIORITY:
            bits = rest.split(None, 1)
            if len(bits) < 2 or not bits[0].isdigit():
                raise UsageError(f"{source}:{number}: {rtype} needs PRIORITY VALUE")
            priority, rest = bits[0], bits[1]
        lines.append(TemplateLine(name, rtype, priority, rest, number))
    return lines


def load_template(path: Optional[str] = None) -> list[TemplateLine]:
    path = path or DEFAULT_TEMPLATE
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_template(handle.read(), path)
    except OSError as exc:
        raise UsageError(f"cannot read DNS template {path}: {exc.strerror}") from None


def placeholders(domain: str, server_ip: str, mail_server_ip: str, nameservers: list[str], *,
                 mail_server_hostname: str = "", domainkey: str = "", service_id: str = "",
                 client_id: str = "") -> dict[str, str]:
    """The placeholder values of one zone."""
    values = {
        "domain": domain, "server_ip": server_ip, "mail_server_ip": mail_server_ip,
        "mail_server_hostname": mail_server_hostname, "domainkey": domainkey,
        "service_id": service_id, "client_id": client_id,
        "year": time.strftime("%Y", time.gmtime()), "unixtime": str(int(time.time())),
    }
    for index in range(8):
        values[f"ns{index + 1}"] = nameservers[index].rstrip(".") if index < len(nameservers) else ""
    return values


def render(template: list[TemplateLine], values: Mapping[str, str]) -> list[Record]:
    """Records with placeholders filled; a record with an empty or unknown placeholder is skipped."""
    records: list[Record] = []
    for line in template:
        fields = [line.name, line.value]
        if any(not values.get(name) for field in fields for name in _PLACEHOLDER.findall(field)):
            continue
        name, value = (_PLACEHOLDER.sub(lambda m: values[m.group(1)], f) for f in fields)
        records.append(Record(name, line.type, value, line.priority))
    return records
