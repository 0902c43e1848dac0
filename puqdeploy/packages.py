"""Per-service HestiaCP packages built from the service's resolved limits.

Each Hestia user puqdeploy creates gets its own package (named like the user), so a
change-package later rewrites exactly that package and nothing shared. Roles a user does not
serve get 0, so a Split mail user can never host a website by accident.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence


def _limit(limits: Mapping[str, object], key: str) -> str:
    value = limits.get(key, "unlimited")
    return str(value)


def package_values(role: str, limits: Mapping[str, object], nameservers: Sequence[str],
                   backend_template: Optional[str] = None) -> dict[str, str]:
    """KEY='value' pairs for v-add-user-package; `role` is web, mail, dns or all (unified)."""
    serves = {"web", "mail", "dns"} if role == "all" else {role}
    web, mail, dns = "web" in serves, "mail" in serves, "dns" in serves
    disk = 0
    for part, key in (("web", "web_disk_quota"), ("mail", "mail_disk_quota")):
        if part in serves:
            value = limits.get(key, "unlimited")
            if value == "unlimited":
                disk = -1
            elif disk >= 0:
                disk += int(value)
    return {
        "WEB_TEMPLATE": "default",
        "PROXY_TEMPLATE": "default",
        "BACKEND_TEMPLATE": backend_template or "default",
        "DNS_TEMPLATE": "default-nomail",
        "WEB_DOMAINS": _limit(limits, "web_domains") if web else "0",
        "WEB_ALIASES": _limit(limits, "web_aliases") if web else "0",
        "DNS_DOMAINS": _limit(limits, "dns_domains") if dns else "0",
        "DNS_RECORDS": _limit(limits, "dns_records") if dns else "0",
        "MAIL_DOMAINS": _limit(limits, "mail_domains") if mail else "0",
        "MAIL_ACCOUNTS": _limit(limits, "mail_accounts") if mail else "0",
        "RATE_LIMIT": "200",
        "DATABASES": _limit(limits, "web_databases") if web else "0",
        "CRON_JOBS": _limit(limits, "web_cron_jobs") if web else "0",
        "DISK_QUOTA": "unlimited" if disk < 0 else str(disk),
        "BANDWIDTH": _limit(limits, "web_bandwidth") if web else "unlimited",
        "NS": ",".join(nameservers),
        "SHELL": "nologin",
        "CPU_QUOTA": "unlimited",
        "CPU_QUOTA_PERIOD": "unlimited",
        "MEMORY_LIMIT": "unlimited",
        "SWAP_LIMIT": "unlimited",
        "BACKUPS": _limit(limits, "web_backups" if web else "mail_backups"),
        "BACKUPS_INCREMENTAL": "no",
    }


def differs(wanted: Mapping[str, str], current: Mapping[str, object]) -> bool:
    """True when the panel's package does not hold every wanted value."""
    return any(str(current.get(key, "")) != value for key, value in wanted.items())
