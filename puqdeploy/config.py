"""The YAML config, read into frozen value classes (puqdeploy.frozen) and checked completely before anything runs.

Why so strict: the config decides which machine gets a customer's data, and it is read by every
`create` from a billing hook. A typo (`prot: 2222`) silently ignored, or a product pointing at a
group without a mail node, would surface hours later as failed tasks on real servers. So every key
is known, typed and range-checked, cross-references are resolved, and each problem is reported as
`FILE: dotted.key: what is wrong (line N)` with exit 2 (`ConfigError`).

The objects are really immutable (tuples, frozensets, `MappingProxyType`): one `Config` is shared
by the runner's worker threads. This module is on the `create` hot path, so it imports only
PyYAML (its C loader when present), `ipaddress` and `validate`; `difflib` only for a suggestion.
"""

from __future__ import annotations

import math
import os
from puqdeploy.frozen import field, frozen
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Optional

import yaml

from puqdeploy import validate
from puqdeploy.errors import ConfigError, NotFoundError, UsageError

try:  # libyaml: several times faster, and this runs on every `create`
    _BaseLoader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _BaseLoader = yaml.SafeLoader

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_LIMITS",
    "LIMIT_KEYS",
    "MODE_ROLES",
    "ROLES",
    "Config",
    "DnsConfig",
    "GroupConfig",
    "NodeConfig",
    "ParentDomain",
    "ProductConfig",
    "RetentionConfig",
    "RetryConfig",
    "RunnerConfig",
    "SslConfig",
    "TicketsConfig",
    "WhmcsConfig",
    "load_config",
    "parse_config",
    "parse_limit_overrides",
]

DEFAULT_CONFIG_PATH = "/etc/puqdeploy/config.yaml"
ROLES = frozenset({"web", "mail", "dns"})
MODES = ("split", "unified", "vanity")
#: Roles the product's group must offer for each mode (unified: on ONE node, see _check_group).
MODE_ROLES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"split": ("web", "mail", "dns"), "unified": ("web", "mail"), "vanity": ("web",)}
)

#: Resolved per service at `create` (product limits, then `--set`); quotas and bandwidth in MB.
LIMIT_KEYS = (
    "web_disk_quota", "web_bandwidth", "web_domains", "web_aliases", "web_databases",
    "web_ftp_accounts", "web_cron_jobs", "web_backups", "mail_disk_quota", "mail_domains",
    "mail_accounts", "mail_backups", "dns_domains", "dns_records",
)
#: A small hosting plan. A quota of 0 means "omit that part" (Vanity: no website / no mailbox).
DEFAULT_LIMITS: Mapping[str, int | str] = MappingProxyType({
    "web_disk_quota": 1024, "web_bandwidth": 10240, "web_domains": 1, "web_aliases": 10,
    "web_databases": 1, "web_ftp_accounts": 1, "web_cron_jobs": 1, "web_backups": 1,
    "mail_disk_quota": 1024, "mail_domains": 1, "mail_accounts": 5, "mail_backups": 1,
    "dns_domains": 1, "dns_records": 50,
})
_LIMIT_MAX = 2**31 - 1  # Hestia does bash arithmetic on these; keep far from any overflow

_HOST_KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})


# --------------------------------------------------------------------------- the objects


def _freeze_map(value: Mapping | None) -> Mapping:
    """A read-only view of a private copy, so nobody can change it behind our back."""
    if isinstance(value, MappingProxyType):
        return value
    return MappingProxyType(dict(value or {}))


@frozen
class RunnerConfig:
    """One `run` tick: time budget, thread pool size, lease length and heartbeat."""

    budget_seconds: float = 55.0
    workers: int = 8
    lease_seconds: float = 300.0
    heartbeat_seconds: Optional[float] = None
    poll_seconds: float = 5.0

    @property
    def heartbeat(self) -> float:
        """Seconds between lease extensions: the configured value, else a third of the lease."""
        if self.heartbeat_seconds is not None:
            return self.heartbeat_seconds
        return self.lease_seconds / 3


@frozen
class RetryConfig:
    """Back-off of a failed attempt: min(max, base * factor**(n-1)) +/- jitter, capped."""

    max_attempts: int = 8
    base_seconds: float = 30.0
    factor: float = 2.0
    max_seconds: float = 3600.0
    jitter: float = 0.1


@frozen
class DnsConfig:
    """Public resolvers asked whether a domain points at its node (Auto-SSL waits on this)."""

    resolvers: tuple[str, ...] = ("1.1.1.1", "9.9.9.9")
    port: int = 53
    timeout_seconds: float = 3.0
    verify_zones: bool = True  # after writing a zone, require each DNS node to serve it


@frozen
class RetentionConfig:
    """How long `puqdeploy prune` keeps finished history; terminal failures stay longer."""

    finished_days: float = 30.0
    failed_days: float = 90.0


@frozen
class SslConfig:
    """Auto-SSL: how often to re-check DNS before issuing, and when to stop waiting."""

    enabled: bool = True
    recheck_seconds: float = 300.0
    give_up_after_hours: float = 72.0


@frozen
class WhmcsConfig:
    """WHMCS API credentials for terminal-failure tickets; the secret never shows in repr."""

    url: str
    identifier: str
    secret: str = field(repr=False)
    department_id: int = 1
    priority: str = "High"
    timeout_seconds: float = 10.0


@frozen
class TicketsConfig:
    """Whether a terminal failure opens a ticket, through WHMCS or an operator's command."""

    enabled: bool = False
    whmcs: Optional[WhmcsConfig] = None
    command: Optional[str] = None


@frozen
class NodeConfig:
    """One HestiaCP server (or this machine, transport `local`) and how to reach it."""

    name: str
    host: str
    ip: str = ""  # empty -> host (see __post_init__); always an IP literal after load_config
    port: int = 22
    user: str = "root"
    key_file: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    known_hosts: Optional[str] = None
    host_key: Optional[str] = None
    sudo: bool = False
    transport: str = "ssh"
    hestia_bin: str = "/usr/local/hestia/bin"
    roles: frozenset = frozenset()
    capacity: int = 500
    active: bool = True
    max_concurrency: int = 1
    command_timeout_seconds: float = 600.0
    connect_timeout_seconds: float = 10.0
    keepalive_seconds: float = 15.0
    private: bool = False
    dns_port: int = 53  # where this node's DNS server answers (zone verification)

    def __post_init__(self) -> None:
        # Objects built by hand (tests, the sandbox writer) get the same shapes as loaded ones.
        if not self.ip:
            object.__setattr__(self, "ip", self.host)
        if not isinstance(self.roles, frozenset):
            object.__setattr__(self, "roles", frozenset(self.roles))


@frozen
class GroupConfig:
    """The nodes a product may be placed on, and the name servers its zones announce."""

    name: str
    nodes: tuple[str, ...]
    nameservers: tuple[str, ...]
    reserved_names: tuple[str, ...] = ()
    dns_template: Optional[str] = None

    def __post_init__(self) -> None:
        for attr in ("nodes", "nameservers", "reserved_names"):
            value = getattr(self, attr)
            if not isinstance(value, tuple):
                object.__setattr__(self, attr, tuple(value))


@frozen
class ParentDomain:
    """A Vanity parent (`example.net`): how its DNS is handled and who owns its mail domain."""

    name: str
    dns: str  # "push": add the label's A record to the parent zone; "external": write nothing
    mail_user: Optional[str] = None
    mail_node: Optional[str] = None
    dns_user: Optional[str] = None  # owner of the parent zone on the DNS nodes (push)

    @property
    def zone_owner(self) -> Optional[str]:
        """The Hestia user whose parent zone gets the label's record (default: mail_user)."""
        return self.dns_user or self.mail_user


@frozen
class ProductConfig:
    """What a billing product deploys: mode, node group, PHP version and resolved limits."""

    name: str
    mode: str
    group: str
    php: Optional[str] = None
    limits: Mapping[str, int | str] = field(default_factory=lambda: DEFAULT_LIMITS)
    parent_domains: Mapping[str, ParentDomain] = field(
        default_factory=lambda: MappingProxyType({})
    )
    dns_template: Optional[str] = None
    ssl: bool = True

    def __post_init__(self) -> None:
        if self.limits is not DEFAULT_LIMITS:  # hand-built partial limits get the defaults too
            merged = dict(DEFAULT_LIMITS)
            merged.update(self.limits)
            object.__setattr__(self, "limits", MappingProxyType(merged))
        object.__setattr__(self, "parent_domains", _freeze_map(self.parent_domains))

    @property
    def backend_template(self) -> Optional[str]:
        """HestiaCP's PHP-FPM backend template name: "8.3" -> "PHP-8_3" (None: keep default)."""
        if self.php is None:
            return None
        return "PHP-" + self.php.replace(".", "_")

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles this product's mode places on nodes."""
        return MODE_ROLES[self.mode]


@frozen
class Config:
    """The whole validated config. `path` is the absolute path of the file it came from."""

    path: str
    database: str = "/var/lib/puqdeploy/puqdeploy.db"
    key_file: str = ""  # empty -> "<dir of database>/secret.key"
    log_dir: str = "/var/log/puqdeploy"
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    ssl: SslConfig = field(default_factory=SslConfig)
    tickets: TicketsConfig = field(default_factory=TicketsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    nodes: Mapping[str, NodeConfig] = field(default_factory=lambda: MappingProxyType({}))
    groups: Mapping[str, GroupConfig] = field(default_factory=lambda: MappingProxyType({}))
    products: Mapping[str, ProductConfig] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not self.key_file:
            key = os.path.join(os.path.dirname(self.database) or ".", "secret.key")
            object.__setattr__(self, "key_file", key)
        for attr in ("nodes", "groups", "products"):
            object.__setattr__(self, attr, _freeze_map(getattr(self, attr)))

    def node(self, name: str) -> NodeConfig:
        """The node called `name`; NotFoundError (exit 4) naming the known ones otherwise."""
        try:
            return self.nodes[name]
        except KeyError:
            raise NotFoundError(f"unknown node {name!r} (known: {_known(self.nodes)})") from None

    def product(self, name: str) -> ProductConfig:
        """The product called `name`; UsageError (exit 2) naming the known ones otherwise."""
        try:
            return self.products[name]
        except KeyError:
            raise UsageError(f"unknown product {name!r} (known: {_known(self.products)})") from None

    def group(self, name: str) -> GroupConfig:
        """The group called `name`; UsageError naming the known ones otherwise."""
        try:
            return self.groups[name]
        except KeyError:
            raise UsageError(f"unknown group {name!r} (known: {_known(self.groups)})") from None

    def group_nodes(self, group: str, role: str, active_only: bool = False) -> list[NodeConfig]:
        """The group's nodes that have `role`, in the group's order (inactive ones too unless
        `active_only`: a drained node still serves what is already placed on it)."""
        if role not in ROLES:
            raise UsageError(f"unknown role {role!r} (known: dns, mail, web)")
        return [
            node
            for node in (self.nodes[n] for n in self.group(group).nodes)
            if role in node.roles and (node.active or not active_only)
        ]


def _known(mapping: Mapping) -> str:
    return ", ".join(sorted(mapping)) or "none configured"


# --------------------------------------------------------------------------- YAML with lines


class _Map(dict):
    """A YAML mapping that remembers the line of each of its keys, for error messages."""

    __slots__ = ("lines",)


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Safe loader whose mappings carry key lines and which refuses duplicate keys."""


def _construct_map(loader: Any, node: yaml.MappingNode):
    data = _Map()
    data.lines = {}
    yield data
    seen: dict[tuple[str, str], Any] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            ident = (key_node.tag, key_node.value)
            if ident in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key_node.value!r}", key_node.start_mark,
                )
            seen[ident] = key_node
            data.lines[key_node.value] = key_node.start_mark.line + 1
    data.update(loader.construct_mapping(node))


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def _read_yaml(path: str) -> Any:
    """Parse the file; unreadable files and syntax errors become ConfigError with the line."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError(path, "(file)", f"cannot read: {exc.strerror or exc}") from None
    loader = _Loader(raw)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        column = f" (column {mark.column + 1})" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(path, where, f"YAML syntax error: {problem}{column}") from None
    except yaml.YAMLError as exc:  # reader errors: bad encoding, control characters
        raise ConfigError(path, "(file)", f"YAML error: {exc}") from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- section reader

_REQUIRED = object()


def _kind(value: Any) -> str:
    """How a YAML value reads to an operator: 'string "22"', 'list', 'number 1.5'."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value:g}"
    if isinstance(value, str):
        return f"string {validate.quote(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "null"
    return type(value).__name__


class _Section:
    """One mapping of the config and its dotted position; typed getters raising ConfigError."""

    __slots__ = ("file", "prefix", "data", "line", "base_dir")

    def __init__(self, file: str, prefix: str, data: Any, line: Optional[int], base_dir: str):
        self.file = file
        self.prefix = prefix
        self.data: dict = data if isinstance(data, dict) else _Map()
        self.line = line
        self.base_dir = base_dir
        if data is not None and not isinstance(data, dict):
            raise ConfigError(
                file, prefix or "(top level)", _at(f"must be a mapping, got {_kind(data)}", line)
            )

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def line_of(self, name: str) -> Optional[int]:
        lines = getattr(self.data, "lines", None) or {}
        return lines.get(name, self.line)

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), _at(problem, self.line_of(name)))

    def only(self, allowed: Iterable[str]) -> None:
        """Refuse keys we do not know, suggesting the closest known one."""
        allowed = tuple(allowed)
        for name in self.data:
            if name in allowed:
                continue
            text = str(name)
            import difflib  # only on the error path

            close = difflib.get_close_matches(text, allowed, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(allowed)}"
            raise self.error(text, f"unknown key ({hint})")

    def raw(self, name: str, default: Any) -> tuple[Any, bool]:
        """(value, present). A key given as null counts as absent: it takes the default."""
        value = self.data.get(name)
        if value is None:
            if default is _REQUIRED:
                raise ConfigError(
                    self.file, self.key(name), _at("required key is missing", self.line)
                )
            return default, False
        return value, True

    def integer(self, name: str, default: Any = _REQUIRED, lo: Optional[int] = None,
                hi: Optional[int] = None) -> Any:
        value, present = self.raw(name, default)
        if not present:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, got {_kind(value)}")
        _check_range(self, name, value, lo, hi)
        return value

    def number(self, name: str, default: Any = _REQUIRED, lo: Optional[float] = None,
               hi: Optional[float] = None, above: Optional[float] = None) -> Any:
        """A float; `lo`/`hi` inclusive bounds, `above` an exclusive lower bound."""
        value, present = self.raw(name, default)
        if not present:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"must be a number, got {_kind(value)}")
        if not math.isfinite(value):
            raise self.error(name, f"must be a finite number, got {value}")
        if above is not None and not value > above:
            raise self.error(name, f"must be greater than {above:g}, got {value:g}")
        _check_range(self, name, value, lo, hi)
        return float(value)

    def boolean(self, name: str, default: Any = _REQUIRED) -> Any:
        value, present = self.raw(name, default)
        if present and not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {_kind(value)}")
        return value

    def string(self, name: str, default: Any = _REQUIRED,
               choices: Optional[tuple[str, ...]] = None) -> Any:
        value, present = self.raw(name, default)
        if not present:
            return value
        if not isinstance(value, str):
            hint = " (quote it)" if isinstance(value, (int, float)) else ""
            raise self.error(name, f"must be a string{hint}, got {_kind(value)}")
        if not value.strip():
            raise self.error(name, "must not be empty")
        if choices is not None and value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}, got {_kind(value)}")
        return value

    def strings(self, name: str, default: Any = _REQUIRED, min_len: int = 0,
                max_len: Optional[int] = None) -> Any:
        """A list of non-empty strings, as a tuple."""
        value, present = self.raw(name, default)
        if not present:
            return value
        if not isinstance(value, list):
            raise self.error(name, f"must be a list, got {_kind(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.error(name, f"item {index + 1} must be a non-empty string, "
                                       f"got {_kind(item)}")
        if len(value) < min_len:
            raise self.error(name, f"needs at least {min_len} item{'s' * (min_len != 1)}")
        if max_len is not None and len(value) > max_len:
            raise self.error(name, f"takes at most {max_len} items, got {len(value)}")
        return tuple(value)

    def path(self, name: str, default: Any = _REQUIRED, resolve: bool = True) -> Any:
        """A file path; relative ones are taken from the config file's folder."""
        value = self.string(name, default)
        if value is None or not resolve:
            return value
        return _resolve(self.base_dir, value)

    def section(self, name: str) -> "_Section":
        return _Section(self.file, self.key(name), self.data.get(name), self.line_of(name),
                        self.base_dir)

    def entries(self, name: str) -> list[tuple[str, "_Section"]]:
        """A mapping of named things (nodes, groups, products): [(name, its section)]."""
        outer = self.section(name)
        result = []
        for entry in outer.data:
            if not isinstance(entry, str) or not _name_ok(entry):
                raise outer.error(
                    str(entry),
                    "names are 1-64 of letters, digits, '.', '_' or '-', starting with a letter "
                    "or digit (quote numeric names)",
                )
            result.append((entry, outer.section(entry)))
        return result


def _at(problem: str, line: Optional[int]) -> str:
    return f"{problem} (line {line})" if line else problem


def _check_range(section: _Section, name: str, value: float, lo: Any, hi: Any) -> None:
    if lo is not None and hi is not None and not lo <= value <= hi:
        raise section.error(name, f"must be between {lo:g} and {hi:g}, got {value:g}")
    if lo is not None and value < lo:
        raise section.error(name, f"must be at least {lo:g}, got {value:g}")
    if hi is not None and value > hi:
        raise section.error(name, f"must be at most {hi:g}, got {value:g}")


def _name_ok(name: str) -> bool:
    return 1 <= len(name) <= 64 and name[0].isascii() and name[0].isalnum() and all(
        ch.isascii() and (ch.isalnum() or ch in "._-") for ch in name
    )


def _resolve(base_dir: str, value: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))


# --------------------------------------------------------------------------- loading


def load_config(path: Optional[str] = None) -> Config:
    """Read and validate the config: `path`, else $PUQDEPLOY_CONFIG, else /etc/puqdeploy/...

    Raises ConfigError (exit 2) naming the file, the dotted key and the problem.
    """
    path = path or os.environ.get("PUQDEPLOY_CONFIG") or DEFAULT_CONFIG_PATH
    return parse_config(_read_yaml(path), path)


def parse_config(data: Any, path: str) -> Config:
    """Validate already-parsed YAML `data` as if it came from `path` (relative paths resolve
    against its folder). For tools that build a config in memory, e.g. the sandbox writer."""
    base_dir = os.path.dirname(os.path.abspath(path))
    top = _Section(path, "", data, None, base_dir)
    top.only(("database", "key_file", "log_dir", "runner", "retry", "dns", "ssl", "tickets",
              "retention", "nodes", "groups", "products"))
    database = top.path("database", "/var/lib/puqdeploy/puqdeploy.db")
    key_file = top.path("key_file", os.path.join(os.path.dirname(database), "secret.key"))
    log_dir = top.path("log_dir", "/var/log/puqdeploy")
    runner = _runner(top.section("runner"))
    retry = _retry(top.section("retry"))
    dns = _dns(top.section("dns"))
    ssl = _ssl(top.section("ssl"))
    tickets = _tickets(top.section("tickets"))
    retention = _retention(top.section("retention"))
    nodes: dict[str, NodeConfig] = {}
    for name, section in top.entries("nodes"):
        nodes[name] = _node(name, section, nodes)
    groups = {name: _group(name, section, nodes) for name, section in top.entries("groups")}
    products = {
        name: _product(name, section, nodes, groups) for name, section in top.entries("products")
    }
    return Config(
        path=os.path.abspath(path),
        database=database,
        key_file=key_file,
        log_dir=log_dir,
        runner=runner,
        retry=retry,
        dns=dns,
        ssl=ssl,
        tickets=tickets,
        retention=retention,
        nodes=MappingProxyType(nodes),
        groups=MappingProxyType(groups),
        products=MappingProxyType(products),
    )


def _runner(s: _Section) -> RunnerConfig:
    s.only(("budget_seconds", "workers", "lease_seconds", "heartbeat_seconds", "poll_seconds"))
    lease = s.number("lease_seconds", 300.0, above=0)
    heartbeat = s.number("heartbeat_seconds", None, above=0)
    if heartbeat is not None and heartbeat >= lease:
        raise s.error("heartbeat_seconds", f"must be shorter than lease_seconds ({lease:g})")
    return RunnerConfig(
        budget_seconds=s.number("budget_seconds", 55.0, above=0),
        workers=s.integer("workers", 8, lo=1, hi=1024),
        lease_seconds=lease,
        heartbeat_seconds=heartbeat,
        poll_seconds=s.number("poll_seconds", 5.0, above=0),
    )


def _retry(s: _Section) -> RetryConfig:
    s.only(("max_attempts", "base_seconds", "factor", "max_seconds", "jitter"))
    base = s.number("base_seconds", 30.0, lo=0)
    top = s.number("max_seconds", 3600.0, lo=0)
    if top < base:
        raise s.error("max_seconds", f"must be at least base_seconds ({base:g}), got {top:g}")
    return RetryConfig(
        max_attempts=s.integer("max_attempts", 8, lo=1, hi=1000),
        base_seconds=base,
        factor=s.number("factor", 2.0, lo=1),
        max_seconds=top,
        jitter=s.number("jitter", 0.1, lo=0, hi=1),
    )


def _dns(s: _Section) -> DnsConfig:
    s.only(("resolvers", "port", "timeout_seconds", "verify_zones"))
    resolvers = s.strings("resolvers", ("1.1.1.1", "9.9.9.9"), min_len=1)
    checked = []
    for item in resolvers:
        ip = _ip_literal(item)
        if ip is None:
            raise s.error("resolvers", f"{validate.quote(item)} is not an IP address")
        checked.append(ip)
    return DnsConfig(
        resolvers=tuple(checked),
        port=s.integer("port", 53, lo=1, hi=65535),
        timeout_seconds=s.number("timeout_seconds", 3.0, above=0),
        verify_zones=s.boolean("verify_zones", True),
    )


def _ssl(s: _Section) -> SslConfig:
    s.only(("enabled", "recheck_seconds", "give_up_after_hours"))
    return SslConfig(
        enabled=s.boolean("enabled", True),
        recheck_seconds=s.number("recheck_seconds", 300.0, above=0),
        give_up_after_hours=s.number("give_up_after_hours", 72.0, above=0),
    )


def _retention(s: _Section) -> RetentionConfig:
    s.only(("finished_days", "failed_days"))
    finished = s.number("finished_days", 30.0, above=0)
    failed = s.number("failed_days", 90.0, above=0)
    if failed < finished:
        raise s.error("failed_days", f"must be at least finished_days ({finished:g}): terminal "
                                     "failures are kept longer than other history")
    return RetentionConfig(finished_days=finished, failed_days=failed)


def _tickets(s: _Section) -> TicketsConfig:
    s.only(("enabled", "whmcs", "command"))
    enabled = s.boolean("enabled", False)
    whmcs = None
    if s.data.get("whmcs") is not None:
        w = s.section("whmcs")
        w.only(("url", "identifier", "secret", "department_id", "priority", "timeout_seconds"))
        url = w.string("url")
        if not url.startswith(("https://", "http://")) or any(ch.isspace() for ch in url):
            raise w.error("url", f"must be an http(s) URL, got {_kind(url)}")
        whmcs = WhmcsConfig(
            url=url,
            identifier=w.string("identifier"),
            secret=w.string("secret"),
            department_id=w.integer("department_id", 1, lo=1),
            priority=w.string("priority", "High", choices=("Low", "Medium", "High")),
            timeout_seconds=w.number("timeout_seconds", 10.0, above=0),
        )
    command = s.string("command", None)
    if enabled and whmcs is None and command is None:
        raise s.error("enabled", "tickets are enabled but neither tickets.whmcs nor "
                                 "tickets.command is set")
    return TicketsConfig(enabled=enabled, whmcs=whmcs, command=command)


_NODE_KEYS = (
    "host", "ip", "port", "user", "key_file", "password", "known_hosts", "host_key", "sudo",
    "transport", "hestia_bin", "roles", "capacity", "active", "max_concurrency",
    "command_timeout_seconds", "connect_timeout_seconds", "keepalive_seconds", "private",
    "dns_port",
)


def _node(name: str, s: _Section, earlier: Mapping[str, NodeConfig]) -> NodeConfig:
    s.only(_NODE_KEYS)
    transport = s.string("transport", "ssh", choices=("ssh", "local"))
    local = transport == "local"
    host = s.string("host", "127.0.0.1" if local else _REQUIRED)
    if any(ch.isspace() for ch in host) or host.startswith("-"):
        raise s.error("host", f"not a host name or address: {_kind(host)}")
    host_ip = _ip_literal(host)
    if s.data.get("ip") is None:
        if host_ip is None:
            raise s.error("ip", f"required because host {host!r} is a name: the public IPv4/IPv6 "
                                "address used in DNS records and checks")
        ip = host_ip
    else:
        ip = _ip_literal(s.string("ip"))
        if ip is None:
            raise s.error("ip", f"must be an IP address, got {_kind(s.data['ip'])}")
    hestia_bin = s.string("hestia_bin", "/usr/local/hestia/bin")
    if local:
        hestia_bin = _resolve(s.base_dir, hestia_bin)
    elif not hestia_bin.startswith("/"):
        raise s.error("hestia_bin", "must be an absolute path on the node (SSH sets no PATH)")
    roles = s.strings("roles", min_len=1)
    for role in roles:
        if role not in ROLES:
            raise s.error("roles", f"unknown role {role!r} (roles are web, mail, dns)")
    key_file = s.path("key_file", None)
    password = s.string("password", None)
    known_hosts = s.path("known_hosts", None)
    host_key = s.string("host_key", None)
    if host_key is not None:
        host_key = _host_key(s, host_key)
    if not local:
        if key_file is None and password is None:
            raise s.error("key_file", "an ssh node needs key_file (preferred) or password")
        if known_hosts is None and host_key is None:
            raise s.error("known_hosts", "an ssh node needs known_hosts or a pinned host_key: "
                                         "host keys are always verified")
    user = s.string("user", "root")
    if any(ch.isspace() for ch in user) or user.startswith("-"):
        raise s.error("user", f"not a user name: {_kind(user)}")
    port = s.integer("port", 22, lo=1, hi=65535)
    if not local:
        for other in earlier.values():
            if other.transport == "ssh" and (other.host, other.port) == (host, port):
                # Per-node concurrency is what keeps HestiaCP (no locking) safe; two names for
                # one server would each get their own limit. Share a node through groups.
                raise s.error("host", f"same server as node {other.name!r} ({host} port {port});"
                                      " put one node in several groups instead")
    return NodeConfig(
        name=name,
        host=host,
        ip=ip,
        port=port,
        user=user,
        key_file=key_file,
        password=password,
        known_hosts=known_hosts,
        host_key=host_key,
        sudo=s.boolean("sudo", False),
        transport=transport,
        hestia_bin=hestia_bin.rstrip("/") or "/",
        roles=frozenset(roles),
        capacity=s.integer("capacity", 500, lo=1),
        active=s.boolean("active", True),
        max_concurrency=s.integer("max_concurrency", 1, lo=1, hi=256),
        command_timeout_seconds=s.number("command_timeout_seconds", 600.0, above=0),
        connect_timeout_seconds=s.number("connect_timeout_seconds", 10.0, above=0),
        keepalive_seconds=s.number("keepalive_seconds", 15.0, lo=0),
        private=s.boolean("private", False),
        dns_port=s.integer("dns_port", 53, lo=1, hi=65535),
    )


def _host_key(s: _Section, line: str) -> str:
    """A pinned public host key, `TYPE BASE64 [comment]`, checked and returned as `TYPE BASE64`."""
    import binascii

    parts = line.split()
    if len(parts) < 2 or parts[0] not in _HOST_KEY_TYPES:
        raise s.error("host_key", "must be a public key line like 'ssh-ed25519 AAAA...' "
                                  "(see ssh-keyscan)")
    try:
        blob = binascii.a2b_base64(parts[1])
    except (binascii.Error, ValueError):
        raise s.error("host_key", "the key is not valid base64") from None
    kind = parts[0].encode()
    if blob[4:4 + len(kind)] != kind:
        raise s.error("host_key", f"the key data is not a {parts[0]} key")
    return f"{parts[0]} {parts[1]}"


def _ip_literal(text: str) -> Optional[str]:
    """The canonical form of an IPv4/IPv6 literal, or None when `text` is not one.

    Dotted quads are checked here (as `ipaddress` does: four decimal parts 0-255, no leading
    zeros); `ipaddress` itself (2-4 ms to import, on every command that loads the config) is
    imported only for a literal with a colon.
    """
    text = text.strip()
    if ":" not in text:
        parts = text.split(".")
        if len(parts) == 4 and all(p.isdigit() and p.isascii() and len(p) <= 3
                                   and (p == "0" or not p.startswith("0")) and int(p) <= 255
                                   for p in parts):
            return text
        return None
    import ipaddress

    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        return None


def _domain_or_error(s: _Section, key: str, value: str) -> str:
    try:
        return validate.domain(value)
    except UsageError as exc:
        raise s.error(key, str(exc)) from None


def _template(s: _Section, key: str) -> Optional[str]:
    """A zone template file: resolved against the config folder and required to exist now,
    rather than failing every DNS task later."""
    path = s.path(key, None)
    if path is not None and not os.path.isfile(path):
        raise s.error(key, f"template file not found: {path}")
    return path


def _group(name: str, s: _Section, nodes: Mapping[str, NodeConfig]) -> GroupConfig:
    s.only(("nodes", "nameservers", "reserved_names", "dns_template"))
    members = s.strings("nodes", min_len=1)
    for member in members:
        if member not in nodes:
            raise s.error("nodes", f"unknown node {member!r} (known: {_known(nodes)})")
    if len(set(members)) != len(members):
        raise s.error("nodes", "lists a node twice")
    nameservers = tuple(
        _domain_or_error(s, "nameservers", ns)
        for ns in s.strings("nameservers", min_len=1, max_len=8)
    )
    if len(set(nameservers)) != len(nameservers):
        raise s.error("nameservers", "lists a name server twice")
    reserved = tuple(r.strip().lower() for r in s.strings("reserved_names", ()))
    return GroupConfig(
        name=name,
        nodes=members,
        nameservers=nameservers,
        reserved_names=reserved,
        dns_template=_template(s, "dns_template"),
    )


def _product(name: str, s: _Section, nodes: Mapping[str, NodeConfig],
             groups: Mapping[str, GroupConfig]) -> ProductConfig:
    s.only(("mode", "group", "php", "limits", "parent_domains", "dns_template", "ssl"))
    mode = s.string("mode", choices=MODES)
    group_name = s.string("group")
    group = groups.get(group_name)
    if group is None:
        raise s.error("group", f"unknown group {group_name!r} (known: {_known(groups)})")
    members = [nodes[n] for n in group.nodes]
    if mode == "unified":
        if not any({"web", "mail"} <= node.roles for node in members):
            raise s.error("group", f"group {group_name!r} has no node with both web and mail "
                                   "roles (unified puts web and mail on one node)")
    for role in MODE_ROLES[mode]:
        if not any(role in node.roles for node in members):
            raise s.error("group", f"group {group_name!r} has no node with role {role} "
                                   f"({mode} needs {', '.join(MODE_ROLES[mode])})")
    php = s.string("php", None)
    if php is not None and not _is_php_version(php):
        raise s.error("php", f"must be a version like \"8.3\", got {_kind(php)}")
    limits = dict(DEFAULT_LIMITS)
    if s.data.get("limits") is not None:
        ls = s.section("limits")
        ls.only(LIMIT_KEYS)
        for key, value in ls.data.items():
            problem = _limit_problem(value)
            if problem:
                raise ls.error(key, f"{problem}, got {_kind(value)}")
            limits[key] = value
    parents: dict[str, ParentDomain] = {}
    if s.data.get("parent_domains") is not None:
        if mode != "vanity":
            raise s.error("parent_domains", f"only vanity products have parent domains "
                                            f"(this one is {mode})")
        ps = s.section("parent_domains")
        for raw_name in ps.data:
            parent = _parent(str(raw_name), ps.section(raw_name), group, nodes)
            if parent.name in parents:
                raise ps.error(str(raw_name), "parent domain listed twice")
            parents[parent.name] = parent
    if mode == "vanity" and not parents:
        raise s.error("parent_domains", "a vanity product needs at least one parent domain")
    if any(p.dns == "push" for p in parents.values()) and not any(
        "dns" in node.roles for node in members
    ):
        raise s.error("parent_domains", f"dns: push needs a node with role dns in group "
                                        f"{group_name!r}")
    return ProductConfig(
        name=name,
        mode=mode,
        group=group_name,
        php=php,
        limits=MappingProxyType({key: limits[key] for key in LIMIT_KEYS}),
        parent_domains=MappingProxyType(parents),
        dns_template=_template(s, "dns_template"),
        ssl=s.boolean("ssl", True),
    )


def _parent(raw_name: str, s: _Section, group: GroupConfig,
            nodes: Mapping[str, NodeConfig]) -> ParentDomain:
    try:
        name = validate.domain(raw_name)
    except UsageError as exc:
        raise ConfigError(s.file, s.prefix, _at(str(exc), s.line)) from None
    s.only(("dns", "mail_user", "mail_node", "dns_user"))
    dns = s.string("dns", choices=("push", "external"))
    mail_user = s.string("mail_user", None)
    mail_node = s.string("mail_node", None)
    dns_user = s.string("dns_user", None)
    if dns_user is not None and not _is_existing_username(dns_user):
        raise s.error("dns_user", f"not a HestiaCP user name: {_kind(dns_user)}")
    if dns == "push" and (dns_user or mail_user) is None:
        raise s.error("dns_user", "dns: push needs the user that owns the parent zone on the dns "
                                  "nodes (dns_user, or mail_user when the same user owns both)")
    if (mail_user is None) != (mail_node is None):
        missing = "mail_node" if mail_node is None else "mail_user"
        raise s.error(missing, "mail_user and mail_node go together (the provider user that owns "
                               "this mail domain, and its node)")
    if mail_user is not None and not _is_existing_username(mail_user):
        raise s.error("mail_user", f"not a HestiaCP user name: {_kind(mail_user)}")
    if mail_node is not None:
        if mail_node not in nodes:
            raise s.error("mail_node", f"unknown node {mail_node!r} (known: {_known(nodes)})")
        if mail_node not in group.nodes or "mail" not in nodes[mail_node].roles:
            raise s.error("mail_node", f"{mail_node!r} must be a node with role mail in group "
                                       f"{group.name!r}")
    return ParentDomain(name=name, dns=dns, mail_user=mail_user, mail_node=mail_node,
                        dns_user=dns_user)


def _is_php_version(text: str) -> bool:
    major, dot, minor = text.partition(".")
    return bool(dot) and major.isdigit() and minor.isdigit() and len(major) <= 2 \
        and len(minor) <= 2 and major.isascii() and minor.isascii()


def _is_existing_username(text: str) -> bool:
    """An already existing Hestia user (e.g. `admin`): format only, no reserved list."""
    return 1 <= len(text) <= 32 and text[0].isascii() and text[0].isalnum() and all(
        ch.isascii() and (ch.isalnum() or ch in "._-") for ch in text
    )


def _limit_problem(value: Any) -> Optional[str]:
    """None when `value` is a valid limit (int 0..2**31-1 or "unlimited"), else why not."""
    if value == "unlimited" and isinstance(value, str):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _LIMIT_MAX:
        return f"must be a whole number from 0 to {_LIMIT_MAX} or \"unlimited\""
    return None


def parse_limit_overrides(pairs: list[str]) -> dict[str, int | str]:
    """`--set KEY=VALUE` arguments as {key: int | "unlimited"}; the last one of a key wins.

    Raises UsageError for an unknown key (listing the known ones) or a bad value.
    """
    result: dict[str, int | str] = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        key, text = key.strip(), text.strip()
        if not eq or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {validate.quote(pair)}")
        if key not in LIMIT_KEYS:
            import difflib

            close = difflib.get_close_matches(key, LIMIT_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UsageError(f"--set: unknown limit {validate.quote(key)} ({hint}known: "
                             f"{', '.join(LIMIT_KEYS)})")
        if text.lower() == "unlimited":
            result[key] = "unlimited"
            continue
        if not (text.isascii() and text.isdigit()) or int(text) > _LIMIT_MAX:
            raise UsageError(f"--set {key}: value must be a whole number between 0 and "
                             f"{_LIMIT_MAX} or 'unlimited', got {validate.quote(text)}")
        result[key] = int(text)
    return result
