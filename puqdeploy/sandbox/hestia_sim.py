"""A simulated HestiaCP command set: the `v-*` programs puqdeploy runs, on a node directory.

Run as ``python -I -S hestia_sim.py NODE_DIR PROGRAM ARGS...`` — normally through the
``NODE/bin/hestia`` wrapper and its ``v-*`` symlinks that ``node.install_node`` creates, so the
node's ``bin/`` directory is a drop-in ``hestia_bin``. Standalone and stdlib-only on purpose:
the wrapper runs it hundreds of times per test session, so it imports almost nothing at start
(no ``re``, no ``json`` unless a fault knob needs it) and every command finishes in a few
milliseconds of work.

Why a simulator that mimics the real panel's warts rather than an idealised API: puqdeploy's
steps must be idempotent against the *real* HestiaCP, so the sandbox keeps the behaviours that
bite — no duplicate check in ``v-add-dns-record``, ``v-unsuspend-user`` without an "already"
check (it decrements the admin's SUSPENDED_USERS counter anyway, clamped at 0 like the real
``decrease_user_value``), ``v-list-mail-domain-dkim-dns`` printing a bogus key with exit 0 when
DKIM is off, package rewrites that do not reach existing users, the prefix-matching
``v-delete-user-package``, the cross-user domain checks of ``is_domain_new``, no ``www.`` alias
for sub-domains, and "Error: ..." lines on STDOUT with Hestia's exit codes.

State mirrors Hestia's layout under ``NODE/data`` (``users/USER/user.conf``, ``web.conf``,
``mail.conf``, ``mail/DOMAIN.conf``, ``dns.conf``, ``dns/DOMAIN.conf``, ``packages/*.pkg``,
``hestia.conf``), in Hestia's ``KEY='value'`` line format. Passwords exist only as salted SHA-512
hashes (``{SSHA512}``, dovecot's scheme) in ``data/shadow`` and in the mail domain confs. Files
are replaced atomically (temp file + ``os.replace``) but, like Hestia, nothing locks the panel
state: callers must run one command at a time per node. Only the simulator's own bookkeeping
(fault counters) takes a lock.

Like the real panel, every change to a zone rewrites that zone's BIND file and the list of zones
(Hestia: ``/home/USER/conf/dns/DOMAIN.db`` and ``zone`` lines in ``/etc/bind/named.conf``; here
``NODE/bind/zones/DOMAIN.db`` and ``NODE/bind/zones.conf``), the SOA serial being YYYYMMDDnn, then
runs v-restart-dns: the argv in ``NODE/bind/reload.json`` when a test started a real DNS server
for the node (``tests/dnsfleet.py``), nothing otherwise. subprocess is imported only then.

Instrumentation (not part of Hestia): every run appends one JSON line to ``NODE/commands.log``
and detects overlapping runs on the same node via ``NODE/running/`` markers. ``NODE/faults.json``
injects delays, failures, hangs and streamed output; see ``node.set_faults`` for the schema.
"""

import os
import sys
import time

E_ARGS, E_INVALID, E_NOTEXIST, E_EXISTS, E_SUSPENDED, E_UNSUSPENDED = 1, 2, 3, 4, 5, 6
E_INUSE, E_LIMIT, E_PASSWORD, E_FORBIDEN, E_DISABLED = 7, 8, 9, 10, 11
E_CONNECT, E_RESTART = 15, 20

PACKAGE_KEYS = (
    "WEB_TEMPLATE", "PROXY_TEMPLATE", "BACKEND_TEMPLATE", "DNS_TEMPLATE", "WEB_DOMAINS",
    "WEB_ALIASES", "DNS_DOMAINS", "DNS_RECORDS", "MAIL_DOMAINS", "MAIL_ACCOUNTS", "RATE_LIMIT",
    "DATABASES", "CRON_JOBS", "DISK_QUOTA", "CPU_QUOTA", "CPU_QUOTA_PERIOD", "MEMORY_LIMIT",
    "SWAP_LIMIT", "BANDWIDTH", "NS", "SHELL", "BACKUPS", "BACKUPS_INCREMENTAL",
)
# The order v-change-user-package rewrites a user.conf in (package values first).
USER_PACKAGE_KEYS = (
    "WEB_TEMPLATE", "BACKEND_TEMPLATE", "PROXY_TEMPLATE", "DNS_TEMPLATE", "WEB_DOMAINS",
    "WEB_ALIASES", "DNS_DOMAINS", "DNS_RECORDS", "MAIL_DOMAINS", "MAIL_ACCOUNTS", "RATE_LIMIT",
    "DATABASES", "CRON_JOBS", "DISK_QUOTA", "CPU_QUOTA", "CPU_QUOTA_PERIOD", "MEMORY_LIMIT",
    "SWAP_LIMIT", "BANDWIDTH", "NS", "SHELL", "BACKUPS", "BACKUPS_INCREMENTAL",
)
USER_STATE_DEFAULTS = (
    ("CRON_REPORTS", "yes"), ("MD5", ""), ("RKEY", ""), ("TWOFA", ""), ("QRCODE", ""),
    ("PHPCLI", ""), ("ROLE", "user"), ("SUSPENDED", "no"), ("SUSPENDED_USERS", "0"),
    ("SUSPENDED_WEB", "0"), ("SUSPENDED_DNS", "0"), ("SUSPENDED_MAIL", "0"),
    ("SUSPENDED_DB", "0"), ("SUSPENDED_CRON", "0"), ("IP_AVAIL", "1"), ("IP_OWNED", "0"),
    ("U_USERS", "0"), ("U_DISK", "0"), ("U_DISK_DIRS", "0"), ("U_DISK_WEB", "0"),
    ("U_DISK_MAIL", "0"), ("U_DISK_DB", "0"), ("U_BANDWIDTH", "0"), ("U_WEB_DOMAINS", "0"),
    ("U_WEB_SSL", "0"), ("U_WEB_ALIASES", "0"), ("U_DNS_DOMAINS", "0"), ("U_DNS_RECORDS", "0"),
    ("U_MAIL_DOMAINS", "0"), ("U_MAIL_DKIM", "0"), ("U_MAIL_ACCOUNTS", "0"),
    ("U_MAIL_SSL", "0"), ("U_DATABASES", "0"), ("U_CRON_JOBS", "0"), ("U_BACKUPS", "0"),
    ("LANGUAGE", ""), ("THEME", ""), ("NOTIFICATIONS", "no"), ("PREF_UI_SORT", "name"),
    ("LOGIN_DISABLED", "no"), ("LOGIN_USE_IPLIST", "no"), ("LOGIN_ALLOW_IPS", ""),
)
RESERVED_USERS = ("aria", "aria_log", "mysql", "mysql_upgrade", "ib", "ib_buffer", "ddl",
                  "ddl_recovery", "performance", "sudo")
# Accounts a Debian HestiaCP host has in /etc/passwd: v-add-user refuses them ("exists").
SYSTEM_ACCOUNTS = frozenset((
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
    "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody", "_apt", "messagebus",
    "systemd-network", "systemd-resolve", "systemd-timesync", "sshd", "bind", "Debian-exim",
    "dovecot", "clamav", "debian-spamd", "hestiaweb", "hestiamail", "ntp", "polkitd",
))
VALID_SHELLS = ("sh", "bash", "rbash", "dash", "zsh", "nologin", "false")
WEB_TEMPLATES = ("default", "hosting", "wordpress", "laravel", "drupal", "joomla", "nextcloud",
                 "caching", "suspended")
PROXY_TEMPLATES = ("default", "caching", "hosting")
BASE_BACKEND_TEMPLATES = ("default", "no-php", "socket")
# Two-label public suffixes, standing in for public_suffix_list.dat (www. alias decision).
TWO_PART_SUFFIXES = frozenset((
    "co.uk", "org.uk", "me.uk", "ltd.uk", "plc.uk", "ac.uk", "gov.uk", "com.au", "net.au",
    "org.au", "co.nz", "org.nz", "co.jp", "ne.jp", "or.jp", "com.br", "net.br", "co.za",
    "com.mx", "com.ar", "com.tr", "co.in", "co.il", "com.cn", "com.tw", "com.hk", "co.kr",
    "com.sg", "com.my", "co.id", "com.pl", "co.at", "or.at",
))
DEFAULT_PROXY_EXT = (
    "css,htm,html,js,mjs,json,xml,apng,avif,bmp,cur,gif,ico,jfif,jpg,jpeg,pjp,pjpeg,png,svg,"
    "tif,tiff,webp,aac,caf,flac,m4a,midi,mp3,ogg,opus,wav,3gp,av1,avi,m4v,mkv,mov,mpg,mpeg,mp4,"
    "mp4v,webm,otf,ttf,woff,woff2,doc,docx,odf,odp,ods,odt,pdf,ppt,pptx,rtf,txt,xls,xlsx,7z,"
    "bz2,gz,rar,tar,tgz,zip,apk,appx,bin,dmg,exe,img,iso,jar,msi,webmanifest"
)
DNS_RECORD_TYPES = ("A", "AAAA", "NS", "CNAME", "MX", "TXT", "SRV", "DNSKEY", "KEY",
                    "IPSECKEY", "PTR", "SPF", "TLSA", "CAA", "DS")
ZONE_TTL = "14400"
# The SOA timers Hestia writes into every zone file: refresh, retry, expire, negative-cache TTL.
SOA_TIMERS = ("7200", "3600", "1209600", "180")
# Where a command's RESTART argument is (v-restart-dns is skipped when it is "no"); commands
# not listed (mail domains' DKIM, Let's Encrypt's CAA) always restart, as their sub-calls do.
RESTART_ARG = {"v-add-dns-domain": 11, "v-delete-dns-domain": 2, "v-add-dns-record": 7,
               "v-delete-dns-record": 3, "v-delete-user": 1, "v-suspend-user": 1,
               "v-unsuspend-user": 1}
RELOAD_TIMEOUT = 30.0

# DNS zone templates: (ID, RECORD, TYPE, PRIORITY, VALUE) with Hestia's placeholders. The record
# set is the one HestiaCP's stock templates produce; records naming an unused %ns3%..%ns8% are
# dropped when the zone is created, so IDs keep their template numbers (gaps are normal).
_NS_LINES = tuple((str(i), "@", "NS", "", f"%ns{i}%.") for i in range(1, 9))
_WEB_LINES = (
    ("9", "@", "A", "", "%ip%"),
    ("10", "www", "CNAME", "", "%domain%."),
    ("11", "ftp", "CNAME", "", "%domain%."),
)
_MAIL_LINES = (
    ("12", "mail", "A", "", "%ip%"),
    ("13", "webmail", "CNAME", "", "mail.%domain%."),
    ("14", "@", "MX", "0", "mail.%domain%."),
    ("15", "@", "TXT", "", '"v=spf1 a mx ip4:%ip% -all"'),
    ("16", "_dmarc", "TXT", "", '"v=DMARC1; p=quarantine; pct=100"'),
    ("17", "_submission._tcp", "SRV", "1", "0 587 mail.%domain%."),
    ("18", "_imap._tcp", "SRV", "1", "0 143 mail.%domain%."),
    ("19", "_imaps._tcp", "SRV", "1", "0 993 mail.%domain%."),
    ("20", "_pop3._tcp", "SRV", "1", "0 110 mail.%domain%."),
    ("21", "_pop3s._tcp", "SRV", "1", "0 995 mail.%domain%."),
)
DNS_TEMPLATES = {
    "default": _NS_LINES + _WEB_LINES + _MAIL_LINES,
    "default-nomail": _NS_LINES + _WEB_LINES,
}

ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
DIGITS = frozenset("0123456789")
WHITESPACE = frozenset(" \t\n\r\v\f")
DOMAIN_EXCLUDE = frozenset("[]!@#$^&*()+={},<>?_/\\\"|'`;%") | WHITESPACE
ALIAS_EXCLUDE = DOMAIN_EXCLUDE - {"*"}
COMMON_EXCLUDE = frozenset("!|#$^&()+={}:<>?/\\\"';%` ")


class Fail(Exception):
    """A Hestia `check_result` failure: printed as `Error: <message>` on stdout, exit `code`."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class Exit(Exception):
    """A script ending with a verbatim line (or none), for Hestia's non-`Error:` exits."""

    def __init__(self, code, text=""):
        super().__init__(text)
        self.code = code
        self.text = text


def say(text=""):
    """Write one line to stdout (Hestia prints everything, errors included, on stdout)."""
    sys.stdout.write(text + "\n")


def arg(args, index, default=""):
    """Positional argument `index`, or `default` when absent (bash's ``${N-default}``)."""
    return args[index] if len(args) > index else default


# --------------------------------------------------------------------------- files and formats

def parse_kv(text):
    """Parse ``KEY='value'`` pairs (one object line or a whole user.conf) into an ordered dict.

    Hestia values never contain a single quote (it stores ``%quote%`` instead), so a plain scan
    is exact and keeps ``re`` off the start-up path."""
    out = {}
    pos = 0
    while True:
        eq = text.find("='", pos)
        if eq < 0:
            return out
        end = text.find("'", eq + 2)
        if end < 0:
            return out
        key = text[pos:eq].strip()
        out[key] = text[eq + 2:end]
        pos = end + 1


def format_kv(obj, sep=" "):
    """The inverse of parse_kv: ``KEY='value'`` joined by `sep` (space for object lines)."""
    return sep.join(f"{key}='{value}'" for key, value in obj.items())


def read_text(path):
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def write_atomic(path, text):
    """Replace `path` in one step, so a reader never sees half a file (temp + os.replace)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write(text)
    os.replace(tmp, path)


def read_conf(path):
    """A multi-line ``KEY='value'`` file (user.conf, *.pkg, hestia.conf) as an ordered dict."""
    return parse_kv(read_text(path))


def write_conf(path, conf):
    write_atomic(path, format_kv(conf, "\n") + "\n")


def read_objects(path):
    """One object per line (web.conf, dns/DOMAIN.conf, ...) as a list of ordered dicts."""
    return [parse_kv(line) for line in read_text(path).splitlines() if line.strip()]


def write_objects(path, objects):
    write_atomic(path, "".join(format_kv(obj) + "\n" for obj in objects))


def remove_tree(path):
    """Delete a directory tree without importing shutil (start-up time matters here)."""
    if not os.path.isdir(path):
        return
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(path)


def remove_file(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def random_token(length=16):
    """Hestia's `generate_password`: [A-Za-z0-9] from /dev/urandom."""
    pool = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(pool[byte % len(pool)] for byte in os.urandom(length))


def hash_secret(secret):
    """Salted SHA-512 in dovecot's ``{SSHA512}`` form: base64(sha512(secret + salt) + salt)."""
    import binascii
    import hashlib

    salt = os.urandom(8)
    digest = hashlib.sha512(secret.encode("utf-8", "surrogateescape") + salt).digest()
    return "{SSHA512}" + binascii.b2a_base64(digest + salt, newline=False).decode()


def read_password_arg(value):
    """Hestia's `is_password_valid`: a /tmp/ path (no ``../``) naming a file is replaced by the
    file's first line; anything else is used literally — so a missing temp file silently makes
    the path itself the password, exactly as on a real node."""
    if value.startswith("/tmp/") and "../" not in value and os.path.isfile(value):
        with open(value, encoding="utf-8", errors="surrogateescape") as handle:
            return handle.readline().rstrip("\n")
    return value


# --------------------------------------------------------------------------- JSON like Hestia's

_JSON_ESCAPES = {34: '\\"', 92: "\\\\"}
_JSON_ESCAPES.update({code: f"\\u{code:04x}" for code in range(32)})
_RAW_ESCAPES = {34: '\\"'}
_RAW_ESCAPES.update({code: f"\\u{code:04x}" for code in range(32)})


def jstr(value, raw=False):
    """Escape a value for Hestia-style JSON. Hestia escapes nothing but `"` (and only in DNS
    values); `\\` is escaped too so the output parses, unless the `hestia_raw_json` fault knob
    asks for the real panel's (possibly invalid) output."""
    return value.translate(_RAW_ESCAPES if raw else _JSON_ESCAPES)


def json_document(entries, raw=False):
    """``{"name": {"KEY": "value", ...}, ...}`` built by concatenation, all values strings."""
    if not entries:
        return "{\n}"
    blocks = []
    for name, pairs in entries:
        inner = ",\n".join(f'        "{key}": "{jstr(value, raw)}"' for key, value in pairs)
        blocks.append(f'    "{jstr(name)}": {{\n{inner}\n    }}')
    return "{\n" + ",\n".join(blocks) + "\n}"


def render(fmt, entries, raw=False):
    """Print a listing in Hestia's formats. `json` follows Hestia's key sets exactly; `plain`,
    `csv` and `shell` are faithful in spirit (tab/comma separated, KEY: value), not byte-exact;
    an unknown format prints nothing, as Hestia's `case` does."""
    if fmt == "json":
        say(json_document(entries, raw))
    elif fmt == "plain":
        for name, pairs in entries:
            say("\t".join([name] + [value for _, value in pairs]))
    elif fmt == "csv":
        if entries:
            say(",".join(["NAME"] + [key for key, _ in entries[0][1]]))
        for name, pairs in entries:
            say(",".join([name] + [f'"{value}"' if "," in value else value for _, value in pairs]))
    elif fmt == "shell":
        for index, (name, pairs) in enumerate(entries):
            if index:
                say()
            say(f"NAME: {name}")
            for key, value in pairs:
                say(f"{key}: {value}")


# --------------------------------------------------------------------------- validators

def is_ascii(text):
    return all(ord(char) < 128 for char in text)


def no_newline(value):
    if "\n" in value:
        raise Fail(E_INVALID, f"invalid value :: {value}")


def check_user_format(user, name="user", new=False):
    """Hestia's is_user_format_valid (plus the stricter rule for v-add-user)."""
    if not user:
        return
    bad = Fail(E_INVALID, f"invalid {name} format :: {user}")
    if len(user) == 1:
        if user not in ALNUM:
            raise bad
    elif not (len(user) <= 30 and user[0] in ALNUM and user[-1] in ALNUM
              and all(c in ALNUM or c in "-|._" for c in user[1:-1])):
        raise bad
    if not is_ascii(user):
        raise bad
    if new and not (len(user) >= 2 and user[0] in LETTERS
                    and all(c in ALNUM or c in "-|_" for c in user[1:-1])):
        raise bad


def check_domain_format(domain, name="domain"):
    """Hestia's is_domain_format_valid."""
    if not domain:
        return
    if (any(c in DOMAIN_EXCLUDE for c in domain) or all(c in DIGITS for c in domain)
            or ".." in domain or domain[0] in "-." or domain[-1] in "-."
            or ".-" in domain or "-." in domain or domain == "www"):
        raise Fail(E_INVALID, f"invalid {name} format :: {domain}")
    no_newline(domain)


def check_aliases_format(aliases):
    """Hestia's is_alias_format_valid: like a domain, `*` only as a leading ``*.``."""
    for alias in aliases.replace(",", " ").split():
        if (any(c in ALIAS_EXCLUDE for c in alias) or ".." in alias or alias[0] in "-."
                or alias[-1] in "-." or ".-" in alias or "-." in alias
                or ("*" in alias and not alias.startswith("*."))):
            raise Fail(E_INVALID, f"invalid alias format :: {alias}")


def is_ipv4(value):
    """PHP's FILTER_VALIDATE_IP with FILTER_FLAG_IPV4: dotted quad, no leading zeros."""
    parts = value.split(".")
    if len(parts) != 4:
        return False
    for part in parts:
        if not part or not all(c in DIGITS for c in part) or len(part) > 3:
            return False
        if (len(part) > 1 and part[0] == "0") or int(part) > 255:
            return False
    return True


def is_ipv6(value):
    try:
        import ipaddress

        ipaddress.IPv6Address(value)
        return True
    except ValueError:
        return False


def check_ip_format(ip, name="ip"):
    if ip and not is_ipv4(ip):
        raise Fail(E_INVALID, f"invalid {name} :: {ip}")


def check_email_format(email):
    """Hestia's is_email_format_valid (ASCII reading of its [[:alnum:]] classes)."""
    local, at, host = email.partition("@")
    local_ok = bool(local) and all(c in ALNUM or c in "._%+-" for c in local)
    dot = host.rfind(".")
    head, tld = host[:dot], host[dot + 1:]
    host_ok = dot > 0 and all(c in ALNUM or c in ".-" for c in head) and (
        (2 <= len(tld) <= 63 and all(c in LETTERS for c in tld))
        or (tld.startswith("xn--") and 2 <= len(tld) - 4 <= 63
            and all(c in ALNUM for c in tld[4:])))
    if not (at and local_ok and host_ok):
        raise Fail(E_INVALID, f"invalid email format :: {email}")


def check_localpart_format(value, name="account", maxlen=64):
    """Hestia's is_localpart_format_valid: 1..64 of [alnum _ . -]."""
    if not value:
        return
    bad = Fail(E_INVALID, f"invalid {name} format :: {value}")
    if len(value) == 1:
        if value not in ALNUM:
            raise bad
    elif len(value) > maxlen or not all(c in ALNUM or c in "_.-" for c in value):
        raise bad


def check_object_format(value, name):
    """Hestia's is_object_format_valid (packages, templates): 2..66 of [alnum - | . _]."""
    if not value:
        return
    if not (2 <= len(value) <= 66 and value[0] in ALNUM and value[-1] in ALNUM
            and all(c in ALNUM or c in "-|._" for c in value[1:-1])):
        raise Fail(E_INVALID, f"invalid {name} format :: {value}")


def check_name_format(value):
    if any(c in "'\"<>" for c in value):
        raise Fail(E_INVALID, f"Invalid name contains qoutes (\" or ') :: {value}")
    no_newline(value)


def check_bool(value, name):
    if value and value not in ("yes", "no"):
        raise Fail(E_INVALID, f"invalid {name} format :: {value}")


def check_int(value, name):
    if value and not all(c in DIGITS for c in value):
        raise Fail(E_INVALID, f"invalid {name} format :: {value}")


def is_int(value):
    return bool(value) and all(c in DIGITS for c in value)


def check_restart(value):
    if value and value not in ("yes", "no", "ssl", "reload", "updatessl", "scheduled"):
        raise Fail(E_INVALID, f"invalid restart format :: {value}")


def check_common_format(value, name):
    """Hestia's is_common_format_valid (DNS record names)."""
    if not value:
        return
    bad = Fail(E_INVALID, f"invalid {name} format :: {value}")
    if any(c in COMMON_EXCLUDE for c in value) or len(value) >= 400:
        raise bad
    if "@" in value and len(value) > 1:
        raise bad
    if "*" in value and "*." not in value and value != "*":
        raise bad
    if not (value[-1] in ALNUM or value[-1] in "_*@."):
        raise bad
    if ".." in value or "--" in value or "__" in value:
        raise bad
    if not (value[0] in ALNUM or value[0] in "_*@"):
        raise bad
    no_newline(value)


def format_domain(domain):
    """Hestia's format_domain: lowercase, drop a leading ``www.``, trailing and leading dots."""
    domain = domain.lower()
    if domain.startswith("www."):
        domain = domain[4:]
    domain = domain.rstrip(".").lstrip(".")
    return domain.strip(" \t")


def format_aliases(aliases):
    """Hestia's format_aliases: lowercase, sorted unique, dots squeezed and trimmed."""
    if not aliases or aliases == "none":
        return aliases
    items = set()
    for alias in aliases.lower().replace(" ", ",").split(","):
        while ".." in alias:
            alias = alias.replace("..", ".")
        alias = alias.strip(".")
        if alias:
            items.add(alias)
    return ",".join(sorted(items))


def is_hostname(value):
    """PHP's FILTER_VALIDATE_DOMAIN with FILTER_FLAG_HOSTNAME (trailing dot ignored), read the
    way Hestia's validator reads it: PHP returns the string, so "0" counts as false."""
    value = value[:-1] if value.endswith(".") else value
    if not value or value == "0" or len(value) > 253:
        return False
    for label in value.split("."):
        if not (1 <= len(label) <= 63) or label[0] == "-" or label[-1] == "-":
            return False
        if not all(c in ALNUM or c == "-" for c in label):
            return False
    return True


def validate_dns_value(value, rtype, priority):
    """The checks of Hestia's dns_record_validator.php that matter for hosting zones.

    Returns the (possibly cleaned) value and priority: an SRV value ``P W PORT TARGET`` moves
    its priority into the PRIORITY field, as Hestia does."""
    def bad(message):
        return Fail(E_INVALID, f"{message} :: {value}")

    def in_range(text, high):  # FILTER_VALIDATE_INT: no leading zeros
        return is_int(text) and (text == "0" or text[0] != "0") and int(text) <= high

    if rtype == "A":
        if not is_ipv4(value):
            raise bad("invalid A record format")
    elif rtype == "AAAA":
        if not is_ipv6(value):
            raise bad("invalid AAAA record format")
    elif rtype in ("NS", "PTR"):
        if not is_hostname(value):
            raise bad(f"invalid {rtype} record format")
    elif rtype == "CNAME":
        if not value.rstrip(".") or len(value.rstrip(".")) > 253:
            raise bad("invalid CNAME record format")
    elif rtype == "MX":
        if not is_hostname(value):
            raise bad("invalid MX record format")
        if priority == "":
            raise bad("MX record priority is required")
        if not in_range(priority, 65535):
            raise bad("invalid MX record priority format (must be between 0 and 65535)")
    elif rtype == "SRV":
        # "W PORT TARGET" or "P W PORT TARGET"; like Hestia, a first field that passes as a
        # host name (any non-zero number does) is taken as "TARGET PORT WEIGHT" instead.
        parts = value.split()
        if len(parts) == 4:
            priority, weight, port, target = parts
        elif len(parts) == 3 and (parts[0] == "." or is_hostname(parts[0])):
            target, port, weight = parts
        elif len(parts) == 3 and (parts[2] == "." or is_hostname(parts[2])):
            weight, port, target = parts
        elif len(parts) == 3:
            raise bad("invalid SRV record format (expected target with port and weight)")
        else:
            raise bad("invalid SRV record format (must contain priority weight port target "
                      "or target port weight)")
        for field, label in ((priority, "priority"), (weight, "weight"), (port, "port")):
            if not in_range(field, 65535):
                raise bad(f"invalid SRV record {label} format (must be between 0 and 65535)")
        if not (target == "." or is_hostname(target)):
            raise bad("invalid SRV record target format")
        return f"{int(weight)} {int(port)} {target}", str(int(priority))
    elif rtype in ("TXT", "SPF"):
        if value == "":
            raise bad(f"{rtype} record cannot be empty")
        if any(not 32 <= ord(c) <= 126 for c in value):
            raise bad(f"{rtype} record contains non-ASCII characters")
    elif rtype == "CAA":
        parts = value.split(None, 2)
        if len(parts) < 3:
            raise bad("invalid CAA record format (expected flag tag value)")
        flag, tag, _ = parts
        if not in_range(flag, 255) or not (1 <= len(tag) <= 63
                                           and all(c in ALNUM or c == "-" for c in tag)):
            raise bad("invalid CAA flag or tag")
    return value, priority


# --------------------------------------------------------------------------- panel state

class Panel:
    """Access to one node's panel state, in Hestia's own layout under NODE/data."""

    def __init__(self, node_dir, faults):
        self.node_dir = node_dir
        self.data = os.path.join(node_dir, "data")
        self.users_dir = os.path.join(self.data, "users")
        self.pkg_dir = os.path.join(self.data, "packages")
        self.sys = read_conf(os.path.join(self.data, "hestia.conf"))
        self.root_user = self.sys.get("ROOT_USER", "admin")
        self.raw_json = bool(faults.get("hestia_raw_json"))
        now = time.localtime()
        self.time = time.strftime("%H:%M:%S", now)
        self.date = time.strftime("%Y-%m-%d", now)
        self.year_ahead = time.strftime("%Y-%m-%d", time.localtime(time.time() + 365 * 86400))
        self.serial_day = time.strftime("%Y%m%d", now)
        # Zones (domain -> owner) whose conf changed in this command: their BIND files are
        # rewritten, and the DNS server reloaded, when the command ends (see publish_zones).
        self.changed_zones = {}

    def zone_changed(self, user, domain):
        self.changed_zones[domain] = user

    # -- paths and files
    def path(self, user, *parts):
        return os.path.join(self.users_dir, user, *parts)

    def user_conf(self, user):
        return read_conf(self.path(user, "user.conf"))

    def save_user_conf(self, user, conf):
        write_conf(self.path(user, "user.conf"), conf)

    def objects(self, user, kind):
        """Lines of ``kind``.conf: 'web', 'mail', 'dns', 'mail/DOMAIN', 'dns/DOMAIN'."""
        return read_objects(self.path(user, kind + ".conf"))

    def save_objects(self, user, kind, objects):
        write_objects(self.path(user, kind + ".conf"), objects)

    def has_file(self, user, kind):
        return os.path.isfile(self.path(user, kind + ".conf"))

    def all_users(self):
        try:
            return sorted(name for name in os.listdir(self.users_dir)
                          if os.path.isdir(os.path.join(self.users_dir, name)))
        except FileNotFoundError:
            return []

    def shadow(self):
        """(user, hash) pairs in creation order: data/shadow stands in for /etc/shadow."""
        pairs = []
        for line in read_text(os.path.join(self.data, "shadow")).splitlines():
            name, _, digest = line.partition(":")
            if name:
                pairs.append((name, digest))
        return pairs

    def set_shadow(self, user, digest):
        """Set (digest) or remove (None) a user's entry, keeping creation order."""
        pairs = self.shadow()
        names = [name for name, _ in pairs]
        if digest is None:
            pairs = [pair for pair in pairs if pair[0] != user]
        elif user in names:
            pairs[names.index(user)] = (user, digest)
        else:
            pairs.append((user, digest))
        write_atomic(os.path.join(self.data, "shadow"),
                     "".join(f"{name}:{value}\n" for name, value in pairs))

    # -- lookups with Hestia's error messages
    def user_exists(self, user):
        return bool(user) and "/" not in user and user not in (".", "..") and os.path.isfile(
            self.path(user, "user.conf"))

    def require_user(self, user):
        if not self.user_exists(user):
            raise Fail(E_NOTEXIST, f"user {user} doesn't exist")
        return self.user_conf(user)

    def require_unsuspended_user(self, user, conf=None):
        conf = conf if conf is not None else self.user_conf(user)
        if conf.get("SUSPENDED") == "yes":
            raise Fail(E_SUSPENDED, f"user {user} is suspended")

    def find(self, user, kind, key, value):
        for obj in self.objects(user, kind):
            if obj.get(key) == value:
                return obj
        return None

    def require(self, user, kind, key, value):
        """is_object_valid: e.g. 'web domain X doesn't exist', 'example.com id 7 doesn't exist'."""
        obj = self.find(user, kind, key, value) if self.has_file(user, kind) else None
        if obj is None:
            raise Fail(E_NOTEXIST,
                       f"{os.path.basename(kind)} {key.lower()} {value} doesn't exist")
        return obj

    @staticmethod
    def require_unsuspended(kind, value, obj):
        if obj.get("SUSPENDED") == "yes":
            raise Fail(E_SUSPENDED, f"{os.path.basename(kind)} {value} is suspended")

    @staticmethod
    def require_suspended(kind, value, obj):
        if obj.get("SUSPENDED") != "yes":
            raise Fail(E_UNSUSPENDED, f"{os.path.basename(kind)} {value} is not suspended")

    def update(self, user, kind, key, value, **changes):
        """update_object_value: change fields of the object whose `key` is `value`."""
        objects = self.objects(user, kind)
        for obj in objects:
            if obj.get(key) == value:
                obj.update(changes)
        self.save_objects(user, kind, objects)

    def package(self, name):
        return read_conf(os.path.join(self.pkg_dir, f"{name}.pkg"))

    def package_exists(self, name):
        return os.path.isfile(os.path.join(self.pkg_dir, f"{name}.pkg"))

    def require_package(self, name):
        if not self.package_exists(name):
            raise Fail(E_NOTEXIST, f"package {name} doesn't exist")

    # -- counters (increase_user_value / decrease_user_value)
    def increase(self, user, key, factor=1):
        conf = self.user_conf(user)
        old = conf.get(key, "0")
        conf[key] = str((int(old) if is_int(old) else 0) + factor)
        self.save_user_conf(user, conf)

    def decrease(self, user, key, factor=1):
        """Hestia clamps at 0 (and a value of 1 always drops to 0), so counters drift low."""
        conf = self.user_conf(user)
        old = conf.get(key, "0")
        old = int(old) if is_int(old) else 0
        conf[key] = "0" if old <= 1 else str(max(old - factor, 0))
        self.save_user_conf(user, conf)

    def is_package_full(self, user, key, domain="", alias_count=1):
        """Hestia's is_package_full: usage counted from the conf files, limit from user.conf."""
        if key == "WEB_ALIASES":
            used = alias_count
        elif key in ("DNS_RECORDS", "MAIL_ACCOUNTS"):
            used = len(self.objects(user, ("dns/" if key == "DNS_RECORDS" else "mail/") + domain))
        else:
            used = len(self.objects(user, {"WEB_DOMAINS": "web", "DNS_DOMAINS": "dns",
                                           "MAIL_DOMAINS": "mail"}[key]))
        limit = self.user_conf(user).get(key, "")
        if limit == "unlimited":
            return
        limit_value = int(limit) if is_int(limit) else 0
        if used > limit_value if key == "WEB_ALIASES" else used >= limit_value:
            raise Fail(E_LIMIT, f"{key} limit is reached :: upgrade user package")

    def server_ips(self):
        return [ip for ip in self.sys.get("IPS", "").split(",") if ip]

    def default_ip(self):
        ips = self.server_ips()
        return ips[0] if ips else self.sys.get("IP", "127.0.0.1")

    def backend_templates(self):
        versions = [v for v in self.sys.get("PHP_VERSIONS", "").split(",") if v]
        return BASE_BACKEND_TEMPLATES + tuple("PHP-" + v.replace(".", "_") for v in versions)


def is_domain_new(panel, kind, user, names):
    """Hestia's is_domain_new: a name may not exist as a web domain anywhere (when adding web)
    or under another user (otherwise), likewise for web aliases (only checked when adding web),
    DNS zones and mail domains. So on one node, one domain belongs to one user."""
    users = panel.all_users()
    for name in names:
        if not name:
            continue
        for other in users:
            if panel.find(other, "web", "DOMAIN", name) and (kind == "web" or other != user):
                raise Fail(E_EXISTS, f"Web domain {name} exists")
        if kind == "web":
            for other in users:
                for obj in panel.objects(other, "web"):
                    if name in obj.get("ALIAS", "").split(","):
                        raise Fail(E_EXISTS, f"Web alias {name} exists")
        for other in users:
            if panel.has_file(other, "dns/" + name) and (kind == "dns" or other != user):
                raise Fail(E_EXISTS, f"DNS domain {name} exists")
        for other in users:
            if panel.has_file(other, "mail/" + name) and (kind == "mail" or other != user):
                raise Fail(E_EXISTS, f"Mail domain {name} exists")
        if kind == "mail":
            check_mail_reserved(panel, users, name)


def check_mail_reserved(panel, users, name):
    """mail.X / webmail.X are reserved once X is a mail domain, and the other way round."""
    first, _, rest = name.partition(".")
    for reserved in ("mail", panel.sys.get("WEBMAIL_ALIAS", "webmail")):
        for other in users:
            if panel.has_file(other, f"mail/{reserved}.{name}"):
                raise Fail(E_EXISTS, f'Required subdomain "{reserved}.{name}" already exists')
            if first == reserved and rest and panel.has_file(other, f"mail/{rest}"):
                raise Fail(E_INVALID, f'The subdomain "{first}." is reserved by "{rest}"')


def reject_ip_domain(domain):
    """Hestia refuses an IPv4 address as a domain name, with exit 1 (not 2)."""
    if is_ipv4(domain):
        raise Exit(E_ARGS, "Error: Invalid domain format. IP address detected as input.")


# --------------------------------------------------------------------------- packages

def source_conf_file(path):
    """Hestia's source_conf: ``KEY=value`` / ``KEY='value'`` lines, quotes and spaces trimmed."""
    values = {}
    for line in read_text(path).splitlines():
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key or not (key[0] in LETTERS or key[0] == "_") or not all(
                c in ALNUM or c == "_" for c in key):
            continue
        value = "".join(c for c in value.strip(" =") if ord(c) >= 32)
        if "'" in value:
            value = value[:value.rfind("'")]
            value = value[1:] if value.startswith("'") else value
        values[key] = value.strip(" ")
    return values


def check_package_consistent(panel, values):
    """v-add-user-package's is_package_consistent, in its order and with its messages."""
    for key in ("WEB_DOMAINS", "WEB_ALIASES", "DNS_DOMAINS", "DNS_RECORDS", "MAIL_DOMAINS",
                "MAIL_ACCOUNTS", "DATABASES", "CRON_JOBS"):
        if values.get(key, "") != "unlimited" and not is_int(values.get(key, "")):
            raise Fail(E_INVALID, f"invalid {key} format :: {values.get(key, '')}")
    for key in ("RATE_LIMIT",):
        if not is_int(values.get(key, "")):
            raise Fail(E_INVALID, f"invalid {key} format :: {values.get(key, '')}")
    for key in ("DISK_QUOTA", "BANDWIDTH"):
        if values.get(key, "") != "unlimited" and not is_int(values.get(key, "")):
            raise Fail(E_INVALID, f"invalid {key} format :: {values.get(key, '')}")
    if not is_int(values.get("BACKUPS", "")):
        raise Fail(E_INVALID, f"invalid BACKUPS format :: {values.get('BACKUPS', '')}")
    if values.get("BACKUPS_INCREMENTAL", "") not in ("yes", "no"):
        raise Fail(E_INVALID, "invalid BACKUPS_INCREMENTAL format :: "
                   + values.get("BACKUPS_INCREMENTAL", ""))
    checks = (("WEB_TEMPLATE", WEB_TEMPLATES, "web"),
              ("BACKEND_TEMPLATE", panel.backend_templates(), "backend"),
              ("PROXY_TEMPLATE", PROXY_TEMPLATES, "proxy"),
              ("DNS_TEMPLATE", tuple(DNS_TEMPLATES), "dns"))
    for key, known, label in checks:
        value = values.get(key, "")
        if value and value not in known:
            raise Fail(E_NOTEXIST, f"{value} {label} template doesn't exist")
    if values.get("NS"):
        for index, server in enumerate(values["NS"].split(","), start=1):
            check_domain_format(server, f"ns{index}")
    shell = os.path.basename(values.get("SHELL", ""))
    if shell not in VALID_SHELLS:
        raise Exit(E_INVALID, f"Error: shell {values.get('SHELL', '')} is not valid")


def cmd_add_user_package(panel, args):
    """v-add-user-package TMPFILE PACKAGE [REWRITE]. REWRITE=yes needs the package to exist
    (3 otherwise) and only rewrites the .pkg: users keep the limits copied into their user.conf."""
    tmpfile, package, rewrite = args[0], args[1], arg(args, 2)
    check_object_format(package, "package")
    if rewrite != "yes":
        if panel.package_exists(package):
            raise Exit(E_EXISTS, f"Error: package {package} already exists.")
    else:
        panel.require_package(package)
    if not os.path.isfile(tmpfile):
        raise Exit(E_NOTEXIST, f"{tmpfile} does not exist")
    values = source_conf_file(tmpfile)
    if "SHELL" not in values:  # bash would see the caller's $SHELL here
        values["SHELL"] = os.environ.get("SHELL") or "/bin/bash"
    check_package_consistent(panel, values)
    values["SHELL"] = os.path.basename(values["SHELL"])
    conf = {key: values.get(key, "") for key in PACKAGE_KEYS}
    conf["TIME"], conf["DATE"] = panel.time, panel.date
    os.makedirs(panel.pkg_dir, exist_ok=True)
    write_conf(os.path.join(panel.pkg_dir, f"{package}.pkg"), conf)


PACKAGE_JSON_KEYS = (
    "WEB_TEMPLATE", "BACKEND_TEMPLATE", "PROXY_TEMPLATE", "DNS_TEMPLATE", "WEB_DOMAINS",
    "WEB_ALIASES", "DNS_DOMAINS", "DNS_RECORDS", "MAIL_DOMAINS", "MAIL_ACCOUNTS", "RATE_LIMIT",
    "DATABASES", "CRON_JOBS", "DISK_QUOTA", "CPU_QUOTA", "CPU_QUOTA_PERIOD", "MEMORY_LIMIT",
    "SWAP_LIMIT", "BANDWIDTH", "NS", "SHELL", "BACKUPS", "BACKUPS_INCREMENTAL", "TIME", "DATE",
)
PACKAGES_JSON_KEYS = (
    "WEB_TEMPLATE", "PROXY_TEMPLATE", "DNS_TEMPLATE", "WEB_DOMAINS", "WEB_ALIASES",
    "DNS_DOMAINS", "DNS_RECORDS", "MAIL_DOMAINS", "MAIL_ACCOUNTS", "DATABASES", "CRON_JOBS",
    "DISK_QUOTA", "CPU_QUOTA", "CPU_QUOTA_PERIOD", "MEMORY_LIMIT", "SWAP_LIMIT", "BANDWIDTH",
    "NS", "SHELL", "BACKUPS", "TIME", "DATE",
)


def cmd_list_user_package(panel, args):
    """v-list-user-package PACKAGE [FORMAT]."""
    package, fmt = args[0], arg(args, 1, "shell")
    check_object_format(package, "package")
    panel.require_package(package)
    conf = panel.package(package)
    render(fmt, [(package, [(key, conf.get(key, "")) for key in PACKAGE_JSON_KEYS])])


def cmd_list_user_packages(panel, args):
    """v-list-user-packages [FORMAT]: newest first, and (like Hestia) without BACKEND_TEMPLATE."""
    fmt = arg(args, 0, "shell")
    try:
        names = [n for n in os.listdir(panel.pkg_dir) if n.endswith(".pkg")]
    except FileNotFoundError:
        names = []
    # `ls --sort=time`: newest first.
    names.sort(key=lambda n: (-os.stat(os.path.join(panel.pkg_dir, n)).st_mtime_ns, n))
    entries = []
    for name in names:
        conf = read_conf(os.path.join(panel.pkg_dir, name))
        entries.append((name[:-4], [(key, conf.get(key, "")) for key in PACKAGES_JSON_KEYS]))
    render(fmt, entries)


def cmd_delete_user_package(panel, args):
    """Real behaviour, not E_INUSE: every user whose PACKAGE *starts with* the name (Hestia greps
    ``PACKAGE='NAME`` without the closing quote) is moved to 'default', then the file goes."""
    package = args[0]
    check_object_format(package, "package")
    panel.require_package(package)
    for user in panel.all_users():
        if panel.user_conf(user).get("PACKAGE", "").startswith(package):
            try:
                change_user_package(panel, user, "default", force="")
            except Fail as failure:
                say(f"Error: {failure.message}")
    remove_file(os.path.join(panel.pkg_dir, f"{package}.pkg"))


# --------------------------------------------------------------------------- users

def cmd_add_user(panel, args):
    """v-add-user USER PASSWORD EMAIL [PACKAGE] [NAME] [LASTNAME], checks in Hestia's order."""
    user, password, email = args[0], args[1], args[2]
    package = arg(args, 3, "default")
    name = arg(args, 4)
    if arg(args, 5):
        name = f"{name} {args[5]}"
    check_user_format(user, new=True)
    if email:
        check_email_format(email)
    check_object_format(package, "package")
    if name:
        check_name_format(name)
    if user.lower() in RESERVED_USERS:
        raise Fail(E_INVALID, f"The user name '{user}' is reserved and cannot be used. "
                              f"List of reserved names: {' '.join(RESERVED_USERS)}")
    if user in SYSTEM_ACCOUNTS or os.path.exists(panel.path(user)):
        raise Fail(E_EXISTS, f"user {user} exists")
    password = read_password_arg(password)
    panel.require_package(package)
    # Hestia's regex allows capitals and '|', but Debian's useradd does not: the account
    # creation itself fails, which Hestia reports as E_INVALID.
    if user[0] not in "abcdefghijklmnopqrstuvwxyz_" or not all(
            c in "abcdefghijklmnopqrstuvwxyz0123456789_-" for c in user):
        raise Fail(E_INVALID, "user creation failed")
    create_user(panel, user, password, email, package, name)


def create_user(panel, user, password, email, package, name, role="user"):
    """Write the user's directory tree and user.conf the way v-add-user does."""
    pkg = panel.package(package)
    digest = hash_secret(password)
    conf = {"NAME": name, "PACKAGE": package}
    conf.update((key, value) for key, value in pkg.items() if key not in ("TIME", "DATE"))
    conf["CONTACT"] = email
    conf.update(USER_STATE_DEFAULTS)
    conf.update(MD5=digest, RKEY=random_token(), ROLE=role,
                U_USERS="1" if user == panel.root_user else "0",
                IP_AVAIL="0" if user == panel.root_user else "1")
    conf["TIME"], conf["DATE"] = panel.time, panel.date
    for sub in ("dns", "mail", "ssl"):
        os.makedirs(panel.path(user, sub), exist_ok=True)
    for kind in ("web", "dns", "mail", "db", "cron", "backup"):
        write_atomic(panel.path(user, kind + ".conf"), "")
    panel.save_user_conf(user, conf)
    panel.set_shadow(user, digest)
    if user != panel.root_user:
        panel.increase(panel.root_user, "U_USERS")


USER_JSON_KEYS = (
    "NAME", "PACKAGE", "WEB_TEMPLATE", "BACKEND_TEMPLATE", "PROXY_TEMPLATE", "DNS_TEMPLATE",
    "WEB_DOMAINS", "WEB_ALIASES", "DNS_DOMAINS", "DNS_RECORDS", "MAIL_DOMAINS",
    "MAIL_ACCOUNTS", "DATABASES", "CRON_JOBS", "DISK_QUOTA", "BANDWIDTH", "HOME", "NS",
    "SHELL", "BACKUPS", "CONTACT", "CRON_REPORTS", "RKEY", "TWOFA", "QRCODE", "ROLE",
    "SUSPENDED", "SUSPENDED_USERS", "SUSPENDED_WEB", "SUSPENDED_DNS", "SUSPENDED_MAIL",
    "SUSPENDED_DB", "SUSPENDED_CRON", "IP_AVAIL", "IP_OWNED", "U_USERS", "U_DISK",
    "U_DISK_DIRS", "U_DISK_WEB", "U_DISK_MAIL", "U_DISK_DB", "U_BANDWIDTH", "U_WEB_DOMAINS",
    "U_WEB_SSL", "U_WEB_ALIASES", "U_DNS_DOMAINS", "U_DNS_RECORDS", "U_MAIL_DOMAINS",
    "U_MAIL_DKIM", "U_MAIL_ACCOUNTS", "U_DATABASES", "U_CRON_JOBS", "U_BACKUPS",
    "BACKUPS_INCREMENTAL", "LANGUAGE", "THEME", "NOTIFICATIONS", "PREF_UI_SORT",
    "LOGIN_DISABLED", "LOGIN_USE_IPLIST", "LOGIN_ALLOW_IPS", "PHPCLI", "TIME", "DATE",
)
USERS_JSON_KEYS = (
    "NAME", "PACKAGE", "WEB_TEMPLATE", "BACKEND_TEMPLATE", "PROXY_TEMPLATE", "DNS_TEMPLATE",
    "WEB_DOMAINS", "WEB_ALIASES", "DNS_DOMAINS", "DNS_RECORDS", "MAIL_DOMAINS",
    "MAIL_ACCOUNTS", "DATABASES", "CRON_JOBS", "DISK_QUOTA", "CPU_QUOTA", "CPU_QUOTA_PERIOD",
    "MEMORY_LIMIT", "SWAP_LIMIT", "BANDWIDTH", "NS", "SHELL", "BACKUPS", "CONTACT",
    "CRON_REPORTS", "RKEY", "ROLE", "SUSPENDED", "SUSPENDED_USERS", "SUSPENDED_WEB",
    "SUSPENDED_DNS", "SUSPENDED_MAIL", "SUSPENDED_DB", "SUSPENDED_CRON", "IP_AVAIL",
    "IP_OWNED", "U_USERS", "U_DISK", "U_DISK_DIRS", "U_DISK_WEB", "U_DISK_MAIL", "U_DISK_DB",
    "U_BANDWIDTH", "U_WEB_DOMAINS", "U_WEB_SSL", "U_WEB_ALIASES", "U_DNS_DOMAINS",
    "U_DNS_RECORDS", "U_MAIL_DOMAINS", "U_MAIL_DKIM", "U_MAIL_ACCOUNTS", "U_DATABASES",
    "U_CRON_JOBS", "U_BACKUPS", "LANGUAGE", "TIME", "DATE",
)


def cmd_list_user(panel, args):
    """v-list-user USER [FORMAT]."""
    user, fmt = args[0], arg(args, 1, "shell")
    check_user_format(user)
    conf = panel.require_user(user)
    conf["HOME"] = f"/home/{user}"
    # Like Hestia, these two counters are always the admin's, whoever is listed.
    admin = panel.user_conf(panel.root_user)
    conf["U_USERS"] = admin.get("U_USERS", "")
    conf["SUSPENDED_USERS"] = admin.get("SUSPENDED_USERS", "")
    render(fmt, [(user, [(key, conf.get(key, "")) for key in USER_JSON_KEYS])])


def cmd_list_users(panel, args):
    """v-list-users [FORMAT]: every account in creation order, the admin included."""
    fmt = arg(args, 0, "shell")
    entries = []
    for user, _ in panel.shadow():
        if panel.user_exists(user):
            conf = panel.user_conf(user)
            entries.append((user, [(key, conf.get(key, "")) for key in USERS_JSON_KEYS]))
    render(fmt, entries)


def cmd_delete_user(panel, args):
    """v-delete-user USER [RESTART]: its web, DNS and mail objects go first."""
    user, restart = args[0], arg(args, 1)
    check_user_format(user)
    check_restart(restart)
    panel.require_user(user)
    if user == panel.root_user:
        return
    for obj in panel.objects(user, "web"):
        delete_web_domain(panel, user, obj["DOMAIN"])
    for obj in panel.objects(user, "dns"):
        delete_dns_domain(panel, user, obj["DOMAIN"])
    for obj in panel.objects(user, "mail"):
        delete_mail_domain(panel, user, obj["DOMAIN"])
    unsuspend_user(panel, user)  # v-delete-user calls v-unsuspend-user: the counter drops
    remove_tree(panel.path(user))
    panel.set_shadow(user, None)
    panel.decrease(panel.root_user, "U_USERS")


def change_user_package(panel, user, package, force):
    """v-change-user-package's work: check usage against the new limits, then copy them in."""
    conf = panel.user_conf(user)
    pkg = panel.package(package)
    if force != "yes":
        check_package_covers(conf, pkg)
    for key in USER_PACKAGE_KEYS:
        conf[key] = pkg.get(key, conf.get(key, ""))
    conf["PACKAGE"] = package
    panel.save_user_conf(user, conf)


def check_package_covers(conf, pkg):
    """is_package_available. MAIL_DOMAINS is *not* enforced: Hestia's check there is broken
    (``"$E_LIMI"T``), so a package with fewer mail domains than in use is accepted."""
    checks = (("WEB_DOMAINS", "U_WEB_DOMAINS", "WEB_DOMAIN"),
              ("DNS_DOMAINS", "U_DNS_DOMAINS", "DNS_DOMAIN"),
              ("DATABASES", "U_DATABASES", "DATABASE"),
              ("CRON_JOBS", "U_CRON_JOBS", "CRON"),
              ("DISK_QUOTA", "U_DISK", "DISK"),
              ("BANDWIDTH", "U_BANDWIDTH", "BANDWIDTH"))
    for limit_key, used_key, label in checks:
        limit = pkg.get(limit_key, "0")
        used = conf.get(used_key, "0")
        if limit != "unlimited" and is_int(limit) and is_int(used) and int(limit) < int(used):
            raise Fail(E_LIMIT, f"Package doesn't cover {label} usage")


def cmd_change_user_package(panel, args):
    """v-change-user-package USER PACKAGE [FORCE]."""
    user, package, force = args[0], args[1], arg(args, 2)
    check_user_format(user)
    check_object_format(package, "package")
    panel.require_user(user)
    panel.require_package(package)
    change_user_package(panel, user, package, force)


def cmd_change_user_password(panel, args):
    """v-change-user-password USER [PASSWORD]; without PASSWORD it is read from stdin."""
    user, password = args[0], arg(args, 1)
    check_user_format(user)
    conf = panel.require_user(user)
    panel.require_unsuspended_user(user, conf)
    # Omitted: `read -r password` from stdin when it is not a TTY (IFS trims blanks), then one
    # more read. An empty or closed stdin really does set an empty password on a Hestia node.
    tty = sys.stdin is not None and sys.stdin.isatty()
    if not password and not tty:
        password = read_stdin_line()
    if not password:
        if tty:
            import getpass

            password = getpass.getpass("Password:")
        else:
            password = read_stdin_line()
    password = read_password_arg(password)
    digest = hash_secret(password)
    panel.set_shadow(user, digest)
    conf = panel.user_conf(user)
    conf["RKEY"], conf["MD5"] = random_token(), digest
    panel.save_user_conf(user, conf)


def read_stdin_line():
    """One line of stdin with bash `read`'s trimming ('' at EOF or without stdin)."""
    if sys.stdin is None:
        return ""
    return sys.stdin.readline().strip(" \t\n")


def cmd_suspend_user(panel, args):
    """v-suspend-user USER: 5 when already suspended; suspends its web, mail and DNS too."""
    user, restart = args[0], arg(args, 1)
    check_user_format(user)
    check_restart(restart)
    conf = panel.require_user(user)
    panel.require_unsuspended_user(user, conf)
    if user == panel.root_user:
        return
    for obj in panel.objects(user, "web"):
        if obj.get("SUSPENDED") == "no":
            panel.update(user, "web", "DOMAIN", obj["DOMAIN"], SUSPENDED="yes")
            panel.increase(user, "SUSPENDED_WEB")
    for obj in panel.objects(user, "mail"):
        if obj.get("SUSPENDED") == "no":
            set_mail_domain_suspended(panel, user, obj["DOMAIN"], True)
    for obj in panel.objects(user, "dns"):
        if obj.get("SUSPENDED") == "no":
            set_dns_domain_suspended(panel, user, obj["DOMAIN"], True)
    conf = panel.user_conf(user)
    conf["SUSPENDED"] = "yes"
    panel.save_user_conf(user, conf)
    panel.increase(panel.root_user, "SUSPENDED_USERS")


def set_mail_domain_suspended(panel, user, domain, suspended):
    """v-(un)suspend-mail-domain: the domain *and every account* flip together, so unsuspending
    also revives accounts that had been suspended one by one."""
    flag = "yes" if suspended else "no"
    panel.update(user, "mail", "DOMAIN", domain, SUSPENDED=flag)
    accounts = panel.objects(user, "mail/" + domain)
    for account in accounts:
        account["SUSPENDED"] = flag
    panel.save_objects(user, "mail/" + domain, accounts)
    (panel.increase if suspended else panel.decrease)(user, "SUSPENDED_MAIL")


def set_dns_domain_suspended(panel, user, domain, suspended):
    """v-(un)suspend-dns-domain: the zone and all its records flip together."""
    flag = "yes" if suspended else "no"
    panel.update(user, "dns", "DOMAIN", domain, SUSPENDED=flag)
    records = panel.objects(user, "dns/" + domain)
    for record in records:
        record["SUSPENDED"] = flag
    panel.save_objects(user, "dns/" + domain, records)
    panel.zone_changed(user, domain)
    (panel.increase if suspended else panel.decrease)(user, "SUSPENDED_DNS")


def unsuspend_user(panel, user):
    """v-unsuspend-user has no "is it suspended?" check: it always decrements the admin's
    SUSPENDED_USERS (clamped at 0), so unsuspending an active user makes the counter drift."""
    conf = panel.user_conf(user)
    conf["SUSPENDED"] = "no"
    panel.save_user_conf(user, conf)
    panel.decrease(panel.root_user, "SUSPENDED_USERS")
    for obj in panel.objects(user, "web"):
        if obj.get("SUSPENDED") == "yes":
            panel.update(user, "web", "DOMAIN", obj["DOMAIN"], SUSPENDED="no")
            panel.decrease(user, "SUSPENDED_WEB")
    for obj in panel.objects(user, "dns"):
        if obj.get("SUSPENDED") == "yes":
            set_dns_domain_suspended(panel, user, obj["DOMAIN"], False)
    for obj in panel.objects(user, "mail"):
        if obj.get("SUSPENDED") == "yes":
            set_mail_domain_suspended(panel, user, obj["DOMAIN"], False)


def cmd_unsuspend_user(panel, args):
    """v-unsuspend-user USER (see unsuspend_user: no 'already' check)."""
    user, restart = args[0], arg(args, 1)
    check_user_format(user)
    check_restart(restart)
    panel.require_user(user)
    if user == panel.root_user:
        return
    unsuspend_user(panel, user)


# --------------------------------------------------------------------------- web

def default_alias(domain):
    """No aliases given: ``www.DOMAIN``, except for sub-domains (3+ labels) whose last two
    labels are not a two-part public suffix (``shop.example.net`` gets none)."""
    labels = domain.split(".")
    if len(labels) > 2 and ".".join(labels[-2:]) not in TWO_PART_SUFFIXES:
        return ""
    return f"www.{domain}"


def cmd_add_web_domain(panel, args):
    """v-add-web-domain USER DOMAIN [IP] [RESTART] [ALIASES] [PROXY_EXTENSIONS].

    The package limit is checked before existence, so re-adding a domain a user already has
    at WEB_DOMAINS=1 fails with E_LIMIT (8), not E_EXISTS: list before adding."""
    user, domain = args[0], format_domain(args[1])
    ip, restart = arg(args, 2), arg(args, 3)
    aliases, proxy_ext = format_aliases(arg(args, 4)), arg(args, 5)
    check_user_format(user)
    check_domain_format(domain)
    check_aliases_format(aliases)
    check_ip_format(ip)
    if any(c in "!|#$^&()+={}:@<>?/\\\"';%` " for c in proxy_ext):
        raise Fail(E_INVALID, f"invalid proxy extention format :: {proxy_ext}")
    check_restart(restart)
    conf = panel.require_user(user)
    panel.require_unsuspended_user(user, conf)
    panel.is_package_full(user, "WEB_DOMAINS")
    if aliases != "none":
        # Hestia counts `echo $aliases | wc -l`: an empty alias list still counts as one.
        panel.is_package_full(user, "WEB_ALIASES", alias_count=len(aliases.split(",")))
    is_domain_new(panel, "web", user, [domain] + aliases.split(","))
    reject_ip_domain(domain)
    if ip:
        if panel.server_ips() and ip not in panel.server_ips():
            raise Fail(E_NOTEXIST, f"IP {ip} doesn't exist")
    else:
        ip = panel.default_ip()
    alias = "" if aliases == "none" else (aliases or default_alias(domain))
    obj = {
        "DOMAIN": domain, "IP": ip, "IP6": "", "CUSTOM_DOCROOT": "", "ALIAS": alias,
        "TPL": conf.get("WEB_TEMPLATE") or "default", "SSL": "no", "SSL_FORCE": "no",
        "SSL_HOME": "same", "LETSENCRYPT": "no", "FTP_USER": "", "FTP_MD5": "",
        "BACKEND": conf.get("BACKEND_TEMPLATE") or "default",
        "PROXY": conf.get("PROXY_TEMPLATE") or "default",
        "PROXY_EXT": proxy_ext or DEFAULT_PROXY_EXT, "STATS": "", "STATS_USER": "",
        "STATS_CRYPT": "", "U_DISK": "0", "U_BANDWIDTH": "0", "SUSPENDED": "no",
        "TIME": panel.time, "DATE": panel.date,
    }
    panel.save_objects(user, "web", panel.objects(user, "web") + [obj])
    panel.increase(user, "U_WEB_DOMAINS")
    panel.increase(user, "U_WEB_ALIASES", len(alias.split(",")) if alias else 0)


WEB_JSON_KEYS = (
    "IP", "IP6", "DOCUMENT_ROOT", "U_DISK", "U_BANDWIDTH", "TPL", "ALIAS", "STATS",
    "STATS_USER", "SSL", "SSL_FORCE", "SSL_HSTS", "SSL_HOME", "LETSENCRYPT", "FTP_USER",
    "FTP_PATH", "AUTH_USER", "BACKEND", "PROXY", "PROXY_EXT", "FASTCGI_CACHE",
    "FASTCGI_DURATION", "REDIRECT", "REDIRECT_CODE", "CUSTOM_DOCROOT", "SUSPENDED", "TIME",
    "DATE",
)
WEBS_JSON_KEYS = (
    "IP", "IP6", "DOCUMENT_ROOT", "U_DISK", "U_BANDWIDTH", "TPL", "ALIAS", "STATS",
    "STATS_USER", "SSL", "SSL_HOME", "LETSENCRYPT", "FTP_USER", "FTP_PATH", "AUTH_USER",
    "BACKEND", "PROXY", "PROXY_EXT", "SUSPENDED", "TIME", "DATE",
)


def web_pairs(user, obj, keys):
    """A web.conf object as JSON pairs, with the derived DOCUMENT_ROOT."""
    obj = dict(obj)
    default_root = f"/home/{user}/web/{obj['DOMAIN']}/public_html/"
    obj["DOCUMENT_ROOT"] = obj.get("CUSTOM_DOCROOT") or default_root
    return [(key, obj.get(key, "")) for key in keys]


def cmd_list_web_domain(panel, args):
    """v-list-web-domain USER DOMAIN [FORMAT] (the name is not normalised, as in Hestia)."""
    user, domain, fmt = args[0], args[1], arg(args, 2, "shell")
    check_user_format(user)
    check_domain_format(domain)
    panel.require_user(user)
    obj = panel.require(user, "web", "DOMAIN", domain)
    render(fmt, [(domain, web_pairs(user, obj, WEB_JSON_KEYS))])


def cmd_list_web_domains(panel, args):
    """v-list-web-domains USER [FORMAT]."""
    user, fmt = args[0], arg(args, 1, "shell")
    check_user_format(user)
    panel.require_user(user)
    render(fmt, [(obj["DOMAIN"], web_pairs(user, obj, WEBS_JSON_KEYS))
                 for obj in panel.objects(user, "web")])


def delete_web_domain(panel, user, domain):
    """Remove a web domain and give its counters back."""
    obj = panel.find(user, "web", "DOMAIN", domain)
    panel.save_objects(user, "web", [o for o in panel.objects(user, "web")
                                     if o.get("DOMAIN") != domain])
    remove_file(panel.path(user, "ssl", f"{domain}.crt"))
    panel.decrease(user, "U_WEB_DOMAINS")
    if obj.get("SSL") == "yes":
        panel.decrease(user, "U_WEB_SSL")
    if obj.get("ALIAS"):
        panel.decrease(user, "U_WEB_ALIASES", len(obj["ALIAS"].split(",")))
    if obj.get("SUSPENDED") == "yes":
        panel.decrease(user, "SUSPENDED_WEB")


def cmd_delete_web_domain(panel, args):
    """v-delete-web-domain USER DOMAIN [RESTART]."""
    user, domain, restart = args[0], format_domain(args[1]), arg(args, 2)
    check_user_format(user)
    check_domain_format(domain)
    check_restart(restart)
    panel.require_user(user)
    panel.require(user, "web", "DOMAIN", domain)
    delete_web_domain(panel, user, domain)


def cmd_change_web_domain_backend_tpl(panel, args):
    """v-change-web-domain-backend-tpl USER DOMAIN TEMPLATE: default, no-php, socket or
    PHP-X_Y for the node's PHP versions; anything else is 3."""
    user, domain, template, restart = args[0], format_domain(args[1]), args[2], arg(args, 3)
    check_user_format(user)
    check_domain_format(domain)
    check_object_format(template, "template")
    check_restart(restart)
    conf = panel.require_user(user)
    panel.require_unsuspended_user(user, conf)
    obj = panel.require(user, "web", "DOMAIN", domain)
    panel.require_unsuspended("web", domain, obj)
    if template not in panel.backend_templates():
        raise Fail(E_NOTEXIST, f"{template} backend template doesn't exist")
    panel.update(user, "web", "DOMAIN", domain, BACKEND=template)


# --------------------------------------------------------------------------- DNS

def cmd_add_dns_domain(panel, args):
    """v-add-dns-domain USER DOMAIN IP [NS1..NS8] [RESTART] [DNSSEC]: the zone comes from the
    user's DNS_TEMPLATE; with NS2 empty the package's NS list is used."""
    user, domain, ip = args[0], format_domain(args[1]), args[2]
    ns = [arg(args, i) for i in range(3, 11)]
    restart, dnssec = arg(args, 11), arg(args, 12)
    check_user_format(user)
    check_domain_format(domain)
    check_ip_format(ip)
    conf = panel.require_user(user)
    panel.require_unsuspended_user(user, conf)
    check_restart(restart)
    is_domain_new(panel, "dns", user, [domain])
    reject_ip_domain(domain)
    check_bool(dnssec, "dnssec")
    panel.is_package_full(user, "DNS_DOMAINS")
    template = conf.get("DNS_TEMPLATE", "")
    if template not in DNS_TEMPLATES:
        raise Fail(E_NOTEXIST, f"{template} dns template doesn't exist")
    for index, server in enumerate(ns):
        if server:
            ns[index] = server.strip(".")
            check_domain_format(ns[index], f"ns{index + 1}")
    if not ns[1]:  # NS2 empty: the package's NS list replaces NS1.. (even a given NS1)
        servers = [s for s in conf.get("NS", "").replace(",", " ").split()]
        for index, server in enumerate(servers[:8]):
            ns[index] = server
    records = build_zone(panel, template, domain, ip, ns)
    panel.save_objects(user, "dns/" + domain, records)
    zone = {
        "DOMAIN": domain, "IP": ip, "TPL": template, "TTL": ZONE_TTL, "EXP": panel.year_ahead,
        "SOA": ns[0], "SERIAL": panel.serial_day + "01", "SRC": "",
        "RECORDS": str(len(records)),
        "DNSSEC": dnssec or "no", "KEY": "", "SLAVE": "no", "MASTER": "", "SUSPENDED": "no",
        "TIME": panel.time, "DATE": panel.date,
    }
    panel.save_objects(user, "dns", panel.objects(user, "dns") + [zone])
    panel.zone_changed(user, domain)
    panel.increase(user, "U_DNS_DOMAINS")
    panel.increase(user, "U_DNS_RECORDS", len(records))


def build_zone(panel, template, domain, ip, ns):
    """Fill a zone template. Records of an empty %ns3%..%ns8% are dropped; %ns1%/%ns2% are not
    (Hestia never drops those: an empty one yields an NS record of '.')."""
    records = []
    for rid, record, rtype, priority, value in DNS_TEMPLATES[template]:
        if any(f"%ns{i}%" in value and not ns[i - 1] for i in range(3, 9)):
            continue
        value = value.replace("%ip%", ip).replace("%domain_idn%", domain)
        value = value.replace("%domain%", domain)
        for i in range(1, 9):
            value = value.replace(f"%ns{i}%", ns[i - 1])
        records.append({"ID": rid, "RECORD": record, "TYPE": rtype, "PRIORITY": priority,
                        "VALUE": value, "SUSPENDED": "no", "TIME": panel.time,
                        "DATE": panel.date})
    return records


DNS_JSON_KEYS = ("IP", "TPL", "TTL", "EXP", "SOA", "SERIAL", "DNSSEC", "SRC", "RECORDS",
                 "SUSPENDED", "TIME", "DATE")


def cmd_list_dns_domain(panel, args):
    """v-list-dns-domain USER DOMAIN [FORMAT]."""
    user, domain, fmt = args[0], args[1], arg(args, 2, "shell")
    check_user_format(user)
    check_domain_format(domain)
    panel.require_user(user)
    obj = panel.require(user, "dns", "DOMAIN", domain)
    render(fmt, [(domain, [(key, obj.get(key, "")) for key in DNS_JSON_KEYS])])


def cmd_list_dns_domains(panel, args):
    """v-list-dns-domains USER [FORMAT]."""
    user, fmt = args[0], arg(args, 1, "shell")
    check_user_format(user)
    panel.require_user(user)
    render(fmt, [(obj["DOMAIN"], [(key, obj.get(key, "")) for key in DNS_JSON_KEYS])
                 for obj in panel.objects(user, "dns")])


def delete_dns_domain(panel, user, domain):
    """Remove a zone and its records, giving the counters back."""
    obj = panel.find(user, "dns", "DOMAIN", domain)
    records = len(panel.objects(user, "dns/" + domain))
    panel.save_objects(user, "dns", [o for o in panel.objects(user, "dns")
                                     if o.get("DOMAIN") != domain])
    remove_file(panel.path(user, "dns", f"{domain}.conf"))
    panel.zone_changed(user, domain)
    panel.decrease(user, "U_DNS_DOMAINS")
    panel.decrease(user, "U_DNS_RECORDS", records)
    if obj.get("SUSPENDED") == "yes":
        panel.decrease(user, "SUSPENDED_DNS")


def cmd_delete_dns_domain(panel, args):
    """v-delete-dns-domain USER DOMAIN [RESTART]."""
    user, domain, restart = args[0], format_domain(args[1]), arg(args, 2)
    check_user_format(user)
    check_domain_format(domain)
    check_restart(restart)
    panel.require_user(user)
    panel.require(user, "dns", "DOMAIN", domain)
    delete_dns_domain(panel, user, domain)


def normalise_dns_value(rtype, value):
    """v-add-dns-record's value massaging: a trailing dot for host-name types, quotes removed
    (except CAA) and the whole value re-quoted when it holds a ';' or whitespace."""
    if rtype.startswith("NS") or any(t in rtype for t in ("CNAME", "MX", "PTR", "SRV")):
        if not value.endswith("."):
            value += "."
    if rtype != "CAA":
        value = value.replace('"', "")
        if rtype not in ("SRV", "DNSKEY", "DS", "TLSA", "KEY", "IPSECKEY") and any(
                c == ";" or c in WHITESPACE for c in value):
            value = f'"{value}"'
    return value


def add_dns_record(panel, user, domain, record, rtype, value, priority="", rid="",
                   restart="", ttl=""):
    """v-add-dns-record. No duplicate check: the same record added twice is stored twice."""
    record = record.lower()
    rtype = rtype.upper()
    priority = priority or "10"
    if rtype not in ("MX", "SRV"):
        priority = ""
    value = normalise_dns_value(rtype, value)
    if record == "@" and rtype == "CNAME":
        raise Fail(E_INVALID, "CNAME on root is not allowed")
    domain = format_domain(domain)
    check_user_format(user)
    check_domain_format(domain)
    check_common_format(record, "record")
    if rtype and rtype not in DNS_RECORD_TYPES:
        raise Fail(E_INVALID, f"invalid dns record type format :: {rtype}")
    no_newline(value)
    if value:
        value, priority = validate_dns_value(value, rtype, priority)
    conf = panel.require_user(user)
    panel.require_unsuspended_user(user, conf)
    zone = panel.require(user, "dns", "DOMAIN", domain)
    panel.require_unsuspended("dns", domain, zone)
    panel.is_package_full(user, "DNS_RECORDS", domain=domain)
    kind = "dns/" + domain
    records = panel.objects(user, kind)
    if not rid:
        rid = str(max([int(r["ID"]) for r in records if is_int(r.get("ID", ""))] or [0]) + 1)
    if not (is_int(rid) and rid[0] != "0"):
        raise Fail(E_INVALID, f"invalid id format :: {rid}")
    if any(r.get("ID") == rid for r in records):
        raise Fail(E_EXISTS, f"ID={rid} already exists")
    check_fqdn(rtype, value)
    check_nameserver(records, domain, rtype, value)
    check_int(ttl, "ttl")
    check_restart(restart)
    new = {"ID": rid, "RECORD": record, "TYPE": rtype, "PRIORITY": priority,
           "VALUE": value.replace("'", "%quote%"), "SUSPENDED": "no", "TIME": panel.time,
           "DATE": panel.date}
    if ttl:
        new["TTL"] = ttl
    records.append(new)
    records.sort(key=lambda r: int(r["ID"]) if is_int(r.get("ID", "")) else 0)
    panel.save_objects(user, kind, records)
    bump_zone(panel, user, domain, len(records))
    panel.increase(user, "U_DNS_RECORDS")


def check_fqdn(rtype, value):
    """is_dns_fqnd: NS/SRV values need 3 dots, CNAME/MX/PTR 2 (the trailing dot included)."""
    fields = value.split() or [""]
    if rtype == "SRV" and (fields[0] == "." or fields[-1] == "."):
        return
    if not (rtype.startswith("NS") or any(t in rtype for t in ("CNAME", "MX", "PTR", "SRV"))):
        return
    needed = 2 if rtype in ("CNAME", "MX", "PTR") else 3
    if value.count(".") < needed:
        raise Fail(E_INVALID, f"{rtype} record {value.rstrip('.')} should be a fully "
                              "qualified domain name (FQDN)")


def check_nameserver(records, domain, rtype, value):
    """An in-zone NS target (ns1.DOMAIN.) needs its A record in the zone first."""
    if rtype == "NS" and value.endswith(f".{domain}."):
        host = value[:-len(domain) - 2]
        if not any(r.get("RECORD") == host and r.get("TYPE") == "A" for r in records):
            raise Fail(E_NOTEXIST, f"IN A {host}.{domain} does not exist")


def bump_zone(panel, user, domain, count):
    """update_domain_serial + the RECORDS count, as after every record change."""
    zone = panel.find(user, "dns", "DOMAIN", domain) or {}
    panel.update(user, "dns", "DOMAIN", domain,
                 SERIAL=next_serial(zone.get("SERIAL", ""), panel.serial_day),
                 RECORDS=str(count))
    panel.zone_changed(user, domain)


def next_serial(current, day):
    """Hestia's update_domain_serial: YYYYMMDDnn, today's 01 or the serial plus one.

    Deliberately monotonic where Hestia is not: Hestia restarts at today's 01 whenever the
    stored date is not today (so a serial from the future, or one that ran past nn=99 into
    "tomorrow", goes backwards and secondaries stop transferring) and turns 99+1 into an
    11-digit serial. Here the serial only ever grows: max(today01, current + 1)."""
    first = int(day + "01")
    if is_int(current) and int(current) >= first:
        return str(int(current) + 1)
    return str(first)


def cmd_add_dns_record(panel, args):
    """v-add-dns-record USER DOMAIN RECORD TYPE VALUE [PRIORITY] [ID] [RESTART] [TTL]."""
    add_dns_record(panel, args[0], args[1], args[2], args[3], args[4], arg(args, 5),
                   arg(args, 6), arg(args, 7), arg(args, 8))


def cmd_list_dns_records(panel, args):
    """v-list-dns-records USER DOMAIN [FORMAT]: keyed by ID; TTL falls back to the zone's."""
    user, domain, fmt = args[0], args[1], arg(args, 2, "shell")
    check_user_format(user)
    check_domain_format(domain)
    panel.require_user(user)
    zone = panel.require(user, "dns", "DOMAIN", domain)
    entries = []
    for rec in panel.objects(user, "dns/" + domain):
        value = rec.get("VALUE", "").replace("%quote%", "'").replace("     ", "\t")
        pairs = [("RECORD", rec.get("RECORD", "")), ("TYPE", rec.get("TYPE", "")),
                 ("PRIORITY", rec.get("PRIORITY", "")), ("VALUE", value),
                 ("ID", rec.get("ID", "")), ("SUSPENDED", rec.get("SUSPENDED", "")),
                 ("TIME", rec.get("TIME", "")), ("DATE", rec.get("DATE", "")),
                 ("TTL", rec.get("TTL") or zone.get("TTL", ""))]
        entries.append((rec.get("ID", ""), pairs))
    render(fmt, entries, raw=panel.raw_json)


def delete_dns_record(panel, user, domain, rid):
    """Remove one record (Hestia refuses to drop the last A or NS record)."""
    kind = "dns/" + domain
    records = panel.objects(user, kind)
    target = next(r for r in records if r.get("ID") == rid)
    if target.get("TYPE") in ("A", "NS"):
        if sum(1 for r in records if r.get("TYPE") == target["TYPE"]) <= 1:
            raise Exit(E_INVALID, f"Error: at least one {target['TYPE']} record should "
                                  "remain active")
    records = [r for r in records if r.get("ID") != rid]
    panel.save_objects(user, kind, records)
    bump_zone(panel, user, domain, len(records))
    panel.decrease(user, "U_DNS_RECORDS")


def cmd_delete_dns_record(panel, args):
    """v-delete-dns-record USER DOMAIN ID: the last A or NS record cannot go (2)."""
    user, domain, rid, restart = args[0], format_domain(args[1]), args[2], arg(args, 3)
    check_user_format(user)
    check_domain_format(domain)
    if rid and not (is_int(rid) and rid[0] != "0"):
        raise Fail(E_INVALID, f"invalid id format :: {rid}")
    check_restart(restart)
    panel.require_user(user)
    panel.require(user, "dns", "DOMAIN", domain)
    panel.require(user, "dns/" + domain, "ID", rid)
    delete_dns_record(panel, user, domain, rid)


# --------------------------------------------------------------------------- BIND zone files

def ascii_name(name):
    """A host name as it goes into a zone file: punycode for IDN labels (Hestia runs idn2 on
    zone names, record names and CNAME/MX targets), anything else unchanged."""
    if is_ascii(name):
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def bind_quote(text):
    """A string for a named.conf double-quoted literal."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def txt_strings(value):
    """The character-strings BIND reads from TXT zone-file text, as bytes.

    Stored values are zone-file text: usually one quoted string (``"v=spf1 ... -all"``,
    DKIM's ``"v=DKIM1\\; k=rsa\\; p=..."``), sometimes a bare word (``it's``). Inside and
    outside quotes, ``\\X`` is X and ``\\DDD`` a byte, as in BIND's master-file syntax, so the
    served data is what BIND would read from Hestia's own file (``\\;`` is ``;``)."""
    strings, i, size = [], 0, len(value)
    while i < size:
        if value[i] in WHITESPACE:
            i += 1
            continue
        quoted = value[i] == '"'
        i += quoted
        out = bytearray()
        while i < size:
            char = value[i]
            if quoted and char == '"':
                i += 1
                break
            if not quoted and char in WHITESPACE:
                break
            if char == "\\" and i + 1 < size:
                digits = value[i + 1:i + 4]
                if len(digits) == 3 and all(c in DIGITS for c in digits):
                    out.append(min(int(digits), 255))
                    i += 4
                    continue
                i += 1
                char = value[i]
            out += char.encode("utf-8", "surrogateescape")
            i += 1
        strings.append(bytes(out))
    return strings or [b""]


def quote_txt(chunk):
    """One character-string (<= 255 bytes) as a quoted zone-file string: `"` and `\\`
    escaped, bytes outside printable ASCII as ``\\DDD``."""
    out = []
    for byte in chunk:
        if byte in (34, 92):
            out.append("\\" + chr(byte))
        elif 32 <= byte < 127:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def txt_rdata(value):
    """TXT/SPF data for BIND: every string quoted and, since one character-string holds at
    most 255 bytes (a 2048-bit DKIM key is ~400), long ones split into 255-byte pieces.
    Hestia does the split with `fold -w 255` on the text, which can cut a ``\\;`` in two;
    splitting the bytes after unescaping cannot."""
    chunks = []
    for string in txt_strings(value):
        chunks.extend(string[i:i + 255] for i in range(0, len(string), 255) or [0])
    return " ".join(quote_txt(chunk) for chunk in chunks)


def bind_rdata(rtype, priority, value):
    """The data part of one record line, from Hestia's PRIORITY and VALUE fields."""
    if rtype in ("TXT", "SPF"):
        return txt_rdata(value)
    if rtype == "MX":
        return f"{priority or '10'} {ascii_name(value)}"
    if rtype == "SRV":
        return f"{priority or '10'} {value}"
    if rtype in ("CNAME", "NS", "PTR"):
        return ascii_name(value)
    return value


def zone_file_text(zone, records):
    """The zone file Hestia's update_domain_zone writes (/home/USER/conf/dns/DOMAIN.db): the
    SOA from dns.conf (SOA = NS1, SERIAL, Hestia's timers), then one line per record that is
    not suspended, with the record's TTL or the zone's, ``%quote%`` back to ``'``."""
    domain = ascii_name(zone["DOMAIN"])
    ttl = zone.get("TTL") or ZONE_TTL
    serial = zone.get("SERIAL", "")
    serial = serial if is_int(serial) else "1"
    soa = ascii_name(zone.get("SOA", "").strip("."))
    refresh, retry, expire, negative = SOA_TIMERS
    lines = [
        f"; {domain}: written by the simulated HestiaCP after every change of the zone",
        f"$ORIGIN {domain}.",
        f"$TTL {ttl}",
        f"@\t{ttl}\tIN\tSOA\t{soa}.\troot.{domain}. (",
        f"\t\t\t\t{serial}\t; serial",
        f"\t\t\t\t{refresh}\t; refresh",
        f"\t\t\t\t{retry}\t; retry",
        f"\t\t\t\t{expire}\t; expire",
        f"\t\t\t\t{negative} )\t; negative-cache TTL",
    ]
    for rec in records:
        if rec.get("SUSPENDED") == "yes":
            continue
        rtype = rec.get("TYPE", "").upper()
        value = rec.get("VALUE", "").replace("%quote%", "'")
        name = ascii_name(rec.get("RECORD") or "@")
        rdata = bind_rdata(rtype, rec.get("PRIORITY", ""), value)
        lines.append(f"{name}\t{rec.get('TTL') or ttl}\tIN\t{rtype}\t{rdata}")
    return "\n".join(lines) + "\n"


def bind_paths(node_dir):
    """NODE/bind/: zones/DOMAIN.db (Hestia's /home/USER/conf/dns/), zones.conf (its lines in
    /etc/bind/named.conf) and reload.json (how v-restart-dns reaches a real server)."""
    bind = os.path.join(node_dir, "bind")
    return (os.path.join(bind, "zones"), os.path.join(bind, "zones.conf"),
            os.path.join(bind, "reload.json"))


def zone_file_path(zones_dir, domain):
    return os.path.join(zones_dir, ascii_name(domain) + ".db")


def write_zone_file(panel, zones_dir, user, domain):
    """Write (or, when the zone is gone, remove) one zone file."""
    path = zone_file_path(zones_dir, domain)
    zone = panel.find(user, "dns", "DOMAIN", domain)
    if zone is None:
        remove_file(path)
    else:
        write_atomic(path, zone_file_text(zone, panel.objects(user, "dns/" + domain)))


def write_zone_list(panel, zones_dir, list_path):
    """zones.conf: one master zone per zone that is not suspended (Hestia removes a suspended
    zone's line from named.conf). A zone without its file (made before the node had these
    files) gets it written here, so the server never loads a list naming a missing file."""
    lines = ["// Zones of this simulated HestiaCP node, rewritten after every zone change.\n"]
    for user in panel.all_users():
        for zone in panel.objects(user, "dns"):
            domain = zone.get("DOMAIN", "")
            if not domain or zone.get("SUSPENDED") == "yes":
                continue
            path = zone_file_path(zones_dir, domain)
            if not os.path.exists(path):
                write_zone_file(panel, zones_dir, user, domain)
            lines.append(f'zone "{bind_quote(ascii_name(domain))}" '
                         f'{{type master; file "{bind_quote(path)}";}};\n')
    write_atomic(list_path, "".join(lines))


def write_bind_files(panel, everything=False):
    """Rewrite the files of the zones this command changed (or of every zone) and the list."""
    zones_dir, list_path, _ = bind_paths(panel.node_dir)
    os.makedirs(zones_dir, exist_ok=True)
    changed = dict(panel.changed_zones)
    if everything:
        for user in panel.all_users():
            for zone in panel.objects(user, "dns"):
                changed[zone["DOMAIN"]] = user
        keep = {zone_file_path(zones_dir, domain) for domain in changed}
        for name in os.listdir(zones_dir):  # files of zones that no longer exist
            if name.endswith(".db") and os.path.join(zones_dir, name) not in keep:
                remove_file(os.path.join(zones_dir, name))
    for domain, user in sorted(changed.items()):
        write_zone_file(panel, zones_dir, user, domain)
    write_zone_list(panel, zones_dir, list_path)


def rebuild_bind_files(node_dir):
    """Every zone file and the zone list from the panel state (Hestia's v-rebuild-dns-domains,
    without the reload): for a node whose state predates these files, or was copied."""
    write_bind_files(Panel(os.path.abspath(node_dir), {}), everything=True)


def restart_dns(panel):
    """v-restart-dns. The node's DNS server is whatever NODE/bind/reload.json names: a JSON
    list, the argv to run (``["rndc", "-c", CONF, "reload"]``), written by the test fixture
    that started a real server for this node. Without it there is no server to tell and,
    like a node without DNS_SYSTEM, nothing is restarted: the plain sandbox needs no bind9.
    A failure is Hestia's: "Error: bind9 restart failed", exit E_RESTART, the change kept."""
    _, _, reload_path = bind_paths(panel.node_dir)
    text = read_text(reload_path).strip()
    if not text:
        return 0
    import json
    import subprocess

    argv = []
    try:
        argv = json.loads(text)
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise ValueError(f"{reload_path} must hold a JSON list of strings")
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=RELOAD_TIMEOUT, text=True,
                              errors="replace")
        detail = f"exit {proc.returncode}: {proc.stdout.strip()}" if proc.returncode else ""
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        detail = str(exc) or exc.__class__.__name__
    if not detail:
        return 0
    sys.stderr.write(f"hestia_sim: DNS reload {' '.join(map(str, argv))} failed: {detail}\n")
    say(f"Error: {panel.sys.get('DNS_SYSTEM') or 'bind9'} restart failed")
    return E_RESTART


def publish_zones(panel, program, args, code):
    """After a command changed zones: their BIND files always follow the conf (Hestia writes
    them right after the conf, before anything can fail), the server is reloaded only after
    a success and unless the command's RESTART argument is "no". Nodes without DNS_SYSTEM
    have no DNS server: no files, no reload."""
    if not panel.sys.get("DNS_SYSTEM"):
        return code
    write_bind_files(panel)
    index = RESTART_ARG.get(program)
    if code != 0 or (index is not None and arg(args, index) == "no"):
        return code
    return restart_dns(panel)


# --------------------------------------------------------------------------- mail

def _der(tag, body):
    size = len(body)
    if size < 128:
        head = bytes([size])
    else:
        raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
        head = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + head + body


def fake_dkim_public_key(bits):
    """A well-formed RSA SubjectPublicKeyInfo (PEM) around a random odd modulus of `bits`.

    Not a usable key — generating real primes in pure Python is far too slow for a simulator —
    but it has the exact size and DER shape of `openssl rsa -pubout`, so DKIM TXT records look
    and measure like the real thing (``p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA...``)."""
    import binascii

    modulus = bytearray(os.urandom(max(int(bits) // 8, 64)))
    modulus[0] |= 0x80
    modulus[-1] |= 1
    rsa_key = _der(0x30, _der(0x02, b"\x00" + bytes(modulus)) + _der(0x02, b"\x01\x00\x01"))
    algorithm = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + b"\x05\x00")
    spki = _der(0x30, algorithm + _der(0x03, b"\x00" + rsa_key))
    text = binascii.b2a_base64(spki, newline=False).decode()
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return "-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n"


def dkim_public(panel, user, domain):
    """The key as v-list-mail-domain-dkim-dns prints it, or None when there is none."""
    text = read_text(panel.path(user, "mail", f"{domain}.pub"))
    if not text:
        return None
    return "".join(line for line in text.splitlines() if "KEY-----" not in line)


def publish_dkim(panel, user, domain):
    """The DKIM TXT record goes into a local zone only when this user has one for the domain.
    Failures (e.g. DNS_RECORDS limit) are printed and ignored, as in Hestia."""
    if not panel.has_file(user, "dns/" + domain):
        return
    selector = f'"v=DKIM1\\; k=rsa\\; p={dkim_public(panel, user, domain)}"'
    try:
        add_dns_record(panel, user, domain, "mail._domainkey", "TXT", selector, "", "", "yes")
    except Fail as failure:
        say(f"Error: {failure.message}")


def cmd_add_mail_domain(panel, args):
    """v-add-mail-domain USER DOMAIN [ANTISPAM] [ANTIVIRUS] [DKIM] [DKIM_SIZE] [RESTART]
    [REJECT_SPAM]: DKIM (default yes) is published only into an existing local zone."""
    user, domain = args[0], format_domain(args[1])
    antispam, antivirus, dkim = arg(args, 2, "yes"), arg(args, 3, "yes"), arg(args, 4, "yes")
    dkim_size, restart, reject = arg(args, 5, "2048"), arg(args, 6), arg(args, 7, "no")
    check_user_format(user)
    check_domain_format(domain)
    check_bool(antispam, "antispam")
    check_bool(antivirus, "antivirus")
    check_bool(dkim, "dkim")
    check_int(dkim_size, "")
    check_restart(restart)
    check_bool(reject, "reject")
    conf = panel.require_user(user)
    panel.require_unsuspended_user(user, conf)
    is_domain_new(panel, "mail", user, [domain])
    reject_ip_domain(domain)
    panel.is_package_full(user, "MAIL_DOMAINS")
    obj = {
        "DOMAIN": domain, "ANTIVIRUS": antivirus, "ANTISPAM": antispam, "REJECT": reject,
        "DKIM": dkim, "WEBMAIL": "roundcube", "SSL": "no", "LETSENCRYPT": "no",
        "CATCHALL": "", "ACCOUNTS": "0", "RATE_LIMIT": conf.get("RATE_LIMIT", ""),
        "U_DISK": "0", "SUSPENDED": "no", "TIME": panel.time, "DATE": panel.date,
    }
    panel.save_objects(user, "mail", panel.objects(user, "mail") + [obj])
    write_atomic(panel.path(user, "mail", f"{domain}.conf"), "")
    if dkim == "yes":
        write_atomic(panel.path(user, "mail", f"{domain}.pub"), fake_dkim_public_key(dkim_size))
        publish_dkim(panel, user, domain)
    panel.increase(user, "U_MAIL_DOMAINS")
    if dkim == "yes":
        panel.increase(user, "U_MAIL_DKIM")


def cmd_add_mail_domain_dkim(panel, args):
    """v-add-mail-domain-dkim USER DOMAIN [SIZE]: 4 when DKIM is already on."""
    user, domain, size = args[0], format_domain(args[1]), arg(args, 2, "2048")
    check_user_format(user)
    check_domain_format(domain)
    check_int(size, "")
    conf = panel.require_user(user)
    panel.require_unsuspended_user(user, conf)
    obj = panel.require(user, "mail", "DOMAIN", domain)
    panel.require_unsuspended("mail", domain, obj)
    if obj.get("DKIM") and obj.get("DKIM") != "no":
        raise Fail(E_EXISTS, f"DKIM={obj['DKIM']} already exists")
    write_atomic(panel.path(user, "mail", f"{domain}.pub"), fake_dkim_public_key(size))
    publish_dkim(panel, user, domain)
    panel.update(user, "mail", "DOMAIN", domain, DKIM="yes")
    panel.increase(user, "U_MAIL_DKIM")


def cmd_list_mail_domain_dkim_dns(panel, args):
    """Without DKIM, Hestia prints a record with p=DKIM-SUPPORT-IS-NOT-ACTIVATED and exit 0."""
    user, domain, fmt = args[0], args[1], arg(args, 2, "shell")
    check_user_format(user)
    check_domain_format(domain)
    panel.require_user(user)
    panel.require(user, "mail", "DOMAIN", domain)
    pub = dkim_public(panel, user, domain) or "DKIM-SUPPORT-IS-NOT-ACTIVATED"
    if fmt == "json":
        say("{\n\n\t\"mail._domainkey\": {\n            \"TTL\": \"3600\",\n"
            f"            \"TXT\": \"'v=DKIM1; k=rsa; p={pub}'\"\n\t}}\n}}")
    elif fmt == "plain":
        say(f'mail._domainkey\t3600\tIN\tTXT\t"v=DKIM1; k=rsa; p={pub}"')
    elif fmt == "csv":
        say("RECORD,TTL,IN,TYPE,VALUE")
        say(f'mail._domainkey,3600,IN,TXT,""v=DKIM1; k=rsa; p={pub}""')
    elif fmt == "shell":
        say("RECORD            TTL         TYPE      VALUE")
        say("------            ---         ----      -----")
        say(f'mail._domainkey   3600   IN   TXT      "v=DKIM1; k=rsa; p={pub}"')


MAIL_JSON_KEYS = ("ANTIVIRUS", "ANTISPAM", "DKIM", "CATCHALL", "ACCOUNTS", "RATE_LIMIT",
                  "REJECT", "U_DISK", "SSL", "LETSENCRYPT", "SUSPENDED", "TIME", "DATE",
                  "WEBMAIL_ALIAS", "WEBMAIL", "U_SMTP_RELAY", "U_SMTP_RELAY_HOST",
                  "U_SMTP_RELAY_PORT", "U_SMTP_RELAY_USERNAME")
MAILS_JSON_KEYS = ("ANTIVIRUS", "ANTISPAM", "REJECT", "RATE_LIMIT", "DKIM", "CATCHALL",
                   "ACCOUNTS", "U_DISK", "SSL", "SUSPENDED", "TIME", "DATE", "WEBMAIL_ALIAS",
                   "WEBMAIL")


def cmd_list_mail_domain(panel, args):
    """v-list-mail-domain USER DOMAIN [FORMAT]."""
    user, domain, fmt = args[0], args[1], arg(args, 2, "shell")
    check_user_format(user)
    check_domain_format(domain)
    panel.require_user(user)
    obj = dict(panel.require(user, "mail", "DOMAIN", domain))
    obj["WEBMAIL_ALIAS"] = f"{panel.sys.get('WEBMAIL_ALIAS', 'webmail')}.{domain}"
    render(fmt, [(domain, [(key, obj.get(key, "")) for key in MAIL_JSON_KEYS])])


def cmd_list_mail_domains(panel, args):
    """v-list-mail-domains USER [FORMAT]."""
    user, fmt = args[0], arg(args, 1, "shell")
    check_user_format(user)
    panel.require_user(user)
    alias = panel.sys.get("WEBMAIL_ALIAS", "webmail")
    render(fmt, [(obj["DOMAIN"], [(key, alias if key == "WEBMAIL_ALIAS" else obj.get(key, ""))
                                  for key in MAILS_JSON_KEYS])
                 for obj in panel.objects(user, "mail")])


def delete_mail_domain(panel, user, domain):
    """Remove a mail domain, its accounts, key and DKIM records."""
    obj = panel.find(user, "mail", "DOMAIN", domain)
    accounts = len(panel.objects(user, "mail/" + domain))
    if obj.get("DKIM") == "yes" and panel.has_file(user, "dns/" + domain):
        for rec in panel.objects(user, "dns/" + domain):
            if rec.get("RECORD") in ("mail._domainkey", "_domainkey"):
                delete_dns_record(panel, user, domain, rec["ID"])
    panel.save_objects(user, "mail", [o for o in panel.objects(user, "mail")
                                      if o.get("DOMAIN") != domain])
    for suffix in (".conf", ".pub", ".pem"):
        remove_file(panel.path(user, "mail", domain + suffix))
    remove_file(panel.path(user, "ssl", f"mail.{domain}.crt"))
    panel.decrease(user, "U_MAIL_DOMAINS")
    if obj.get("DKIM") == "yes":
        panel.decrease(user, "U_MAIL_DKIM")
    panel.decrease(user, "U_MAIL_ACCOUNTS", accounts)
    if obj.get("SUSPENDED") == "yes":
        panel.decrease(user, "SUSPENDED_MAIL")


def cmd_delete_mail_domain(panel, args):
    """v-delete-mail-domain USER DOMAIN: also removes its DKIM records from the local zone."""
    user, domain = args[0], format_domain(args[1])
    check_user_format(user)
    check_domain_format(domain)
    panel.require_user(user)
    panel.require(user, "mail", "DOMAIN", domain)
    delete_mail_domain(panel, user, domain)


def mail_account_context(panel, args, need_unsuspended=True, quota=None):
    """Common prologue of the account commands, in Hestia's order: formats (quota included),
    then the user and the mail domain, and that neither is suspended."""
    user, domain, account = args[0], format_domain(args[1]), args[2]
    check_user_format(user)
    check_domain_format(domain)
    check_localpart_format(account)
    if quota is not None and quota != "unlimited":
        check_int(quota, "quota")
    conf = panel.require_user(user)
    if need_unsuspended:
        panel.require_unsuspended_user(user, conf)
    obj = panel.require(user, "mail", "DOMAIN", domain)
    if need_unsuspended:
        panel.require_unsuspended("mail", domain, obj)
    return user, domain, account


def cmd_add_mail_account(panel, args):
    """v-add-mail-account USER DOMAIN ACCOUNT PASSWORD [QUOTA]. MAIL_ACCOUNTS is a limit per
    mail domain (Hestia counts the domain's accounts), not per user."""
    account = args[2].lower() if any(c.isupper() for c in args[2]) else args[2]
    quota = arg(args, 4, "unlimited")
    user, domain, account = mail_account_context(panel, [args[0], args[1], account],
                                                 quota=quota)
    panel.is_package_full(user, "MAIL_ACCOUNTS", domain=domain)
    kind = "mail/" + domain
    accounts = panel.objects(user, kind)
    if any(a.get("ACCOUNT") == account for a in accounts):
        raise Fail(E_EXISTS, f"mail account {account} already exists")
    if any(account in a.get("ALIAS", "").split(",") for a in accounts):
        raise Fail(E_EXISTS, f"mail alias {account} already exists")
    password = read_password_arg(args[3])
    if quota == "unlimited" or int(quota) == 0:
        quota = "unlimited"
    accounts.append({"ACCOUNT": account, "ALIAS": "", "AUTOREPLY": "no", "FWD": "",
                     "FWD_ONLY": "", "MD5": hash_secret(password), "QUOTA": quota,
                     "U_DISK": "0", "SUSPENDED": "no", "TIME": panel.time, "DATE": panel.date})
    panel.save_objects(user, kind, accounts)
    panel.increase(user, "U_MAIL_ACCOUNTS")
    panel.update(user, "mail", "DOMAIN", domain, ACCOUNTS=str(len(accounts)))


ACCOUNT_JSON_KEYS = ("ALIAS", "FWD", "FWD_ONLY", "AUTOREPLY", "QUOTA", "RATE_LIMIT", "U_DISK",
                     "SUSPENDED", "TIME", "DATE", "WEBMAIL_ALIAS")
ACCOUNTS_JSON_KEYS = ("ALIAS", "FWD", "FWD_ONLY", "AUTOREPLY", "QUOTA", "U_DISK", "SUSPENDED",
                      "TIME", "DATE")


def cmd_list_mail_account(panel, args):
    """v-list-mail-account USER DOMAIN ACCOUNT [FORMAT]."""
    user, domain, account, fmt = args[0], args[1], args[2], arg(args, 3, "shell")
    check_user_format(user)
    check_domain_format(domain)
    check_localpart_format(account)
    panel.require_user(user)
    panel.require(user, "mail", "DOMAIN", domain)
    obj = dict(panel.require(user, "mail/" + domain, "ACCOUNT", account))
    obj["WEBMAIL_ALIAS"] = f"{panel.sys.get('WEBMAIL_ALIAS', 'webmail')}.{domain}"
    render(fmt, [(account, [(key, obj.get(key, "")) for key in ACCOUNT_JSON_KEYS])])


def cmd_list_mail_accounts(panel, args):
    """v-list-mail-accounts USER DOMAIN [FORMAT]."""
    user, domain, fmt = args[0], args[1], arg(args, 2, "shell")
    check_user_format(user)
    check_domain_format(domain)
    panel.require_user(user)
    panel.require(user, "mail", "DOMAIN", domain)
    render(fmt, [(obj["ACCOUNT"], [(key, obj.get(key, "")) for key in ACCOUNTS_JSON_KEYS])
                 for obj in panel.objects(user, "mail/" + domain)])


def cmd_delete_mail_account(panel, args):
    """v-delete-mail-account USER DOMAIN ACCOUNT (allowed while suspended)."""
    user, domain, account = mail_account_context(panel, args, need_unsuspended=False)
    kind = "mail/" + domain
    panel.require(user, kind, "ACCOUNT", account)
    accounts = [a for a in panel.objects(user, kind) if a.get("ACCOUNT") != account]
    panel.save_objects(user, kind, accounts)
    panel.decrease(user, "U_MAIL_ACCOUNTS")
    panel.update(user, "mail", "DOMAIN", domain, ACCOUNTS=str(len(accounts)))


def cmd_change_mail_account_password(panel, args):
    """v-change-mail-account-password USER DOMAIN ACCOUNT PASSWORD (5 while suspended)."""
    user, domain, account = mail_account_context(panel, args)
    kind = "mail/" + domain
    obj = panel.require(user, kind, "ACCOUNT", account)
    panel.require_unsuspended(kind, account, obj)
    password = read_password_arg(args[3])
    panel.update(user, kind, "ACCOUNT", account, MD5=hash_secret(password))


def cmd_change_mail_account_quota(panel, args):
    """v-change-mail-account-quota USER DOMAIN ACCOUNT QUOTA (MB; 0 = unlimited)."""
    quota = args[3]
    user, domain, account = mail_account_context(panel, args, quota=quota)
    kind = "mail/" + domain
    obj = panel.require(user, kind, "ACCOUNT", account)
    panel.require_unsuspended(kind, account, obj)
    if quota == "unlimited" or int(quota) == 0:
        quota = "unlimited"
    panel.update(user, kind, "ACCOUNT", account, QUOTA=quota)


def cmd_suspend_mail_account(panel, args):
    """v-suspend-mail-account USER DOMAIN ACCOUNT: 5 when already suspended."""
    user, domain, account = mail_account_context(panel, args)
    kind = "mail/" + domain
    obj = panel.require(user, kind, "ACCOUNT", account)
    panel.require_unsuspended(kind, account, obj)
    panel.update(user, kind, "ACCOUNT", account, SUSPENDED="yes")


def cmd_unsuspend_mail_account(panel, args):
    """v-unsuspend-mail-account USER DOMAIN ACCOUNT: 6 when not suspended."""
    user, domain, account = mail_account_context(panel, args)
    kind = "mail/" + domain
    obj = panel.require(user, kind, "ACCOUNT", account)
    panel.require_suspended(kind, account, obj)
    panel.update(user, kind, "ACCOUNT", account, SUSPENDED="no")


# --------------------------------------------------------------------------- SSL and system

def cmd_add_letsencrypt_domain(panel, args):
    """Issue (simulated) a Let's Encrypt certificate. MAIL=yes is a separate mode that needs a
    mail domain (not a web domain) and certifies mail.DOMAIN (+ webmail.DOMAIN). The real DNS
    pre-check and ACME errors are modelled by fault rules (e.g. exit 3 "DNS record for X doesn't
    exist", exit 15 "Let's Encrypt validation status 400 ...")."""
    user, domain, aliases = args[0], args[1], arg(args, 2)
    mail = arg(args, 3).replace(" ", "")
    check_user_format(user)
    check_domain_format(domain)
    check_aliases_format(aliases)
    conf = panel.require_user(user)
    panel.require_unsuspended_user(user, conf)
    check_bool(mail, "mail")
    mail = "" if mail == "no" else mail
    if not mail:
        obj = panel.require(user, "web", "DOMAIN", domain)
        panel.require_unsuspended("web", domain, obj)
        if aliases != f"*.{domain}":
            known = obj.get("ALIAS", "").split(",")
            for alias in sorted(set(aliases.split(","))):
                if alias and alias not in known:
                    raise Fail(E_NOTEXIST, f"domain alias {alias} doesn't exist")
        names = [domain] + [a for a in aliases.split(",") if a]
    else:
        obj = panel.require(user, "mail", "DOMAIN", domain)
        panel.require_unsuspended("mail", domain, obj)
        if obj.get("WEBMAIL"):
            aliases = f"{panel.sys.get('WEBMAIL_ALIAS', 'webmail')}.{domain}"
        names = [f"mail.{domain}"] + [a for a in aliases.split(",") if a]
    if aliases == f"*.{domain}" and not panel.has_file(user, "dns/" + domain):
        raise Fail(E_NOTEXIST, f"DNS domain {domain} doesn't exist")
    if not mail:
        seed_caa_record(panel, user, domain)
    names = sorted(set(names))
    cert = domain if not mail else f"mail.{domain}"
    write_atomic(panel.path(user, "ssl", f"{cert}.crt"), "".join(n + "\n" for n in names))
    if not mail:
        if obj.get("SSL") != "yes":
            panel.increase(user, "U_WEB_SSL")
        panel.update(user, "web", "DOMAIN", domain, SSL="yes", LETSENCRYPT="yes")
    else:
        if obj.get("SSL") != "yes":
            panel.increase(user, "U_MAIL_SSL")
        panel.update(user, "mail", "DOMAIN", domain, SSL="yes", LETSENCRYPT="yes")


def seed_caa_record(panel, user, domain):
    """Hestia adds (or re-adds) ``@ CAA 0 issue "letsencrypt.org"`` to the user's own zone."""
    zones = [z["DOMAIN"] for z in panel.objects(user, "dns") if domain in z.get("DOMAIN", "")]
    if zones != [domain]:
        return
    for rec in panel.objects(user, "dns/" + domain):
        if rec.get("TYPE") == "CAA" and "letsencrypt.org" in rec.get("VALUE", "").lower():
            delete_dns_record(panel, user, domain, rec["ID"])
            break
    try:
        add_dns_record(panel, user, domain, "@", "CAA", '0 issue "letsencrypt.org"')
    except Fail as failure:
        say(f"Error: {failure.message}")


def cmd_list_sys_info(panel, args):
    """v-list-sys-info [FORMAT]: host name, OS and Hestia version from data/hestia.conf."""
    fmt = arg(args, 0, "shell")
    try:
        with open("/proc/uptime") as handle:
            uptime = str(int(float(handle.read().split()[0])) // 60)
        with open("/proc/loadavg") as handle:
            load = " / ".join(handle.read().split()[:3])
    except OSError:
        uptime, load = "0", "0 / 0 / 0"
    info = [("HOSTNAME", panel.sys.get("HOSTNAME", "")), ("OS", panel.sys.get("OS", "Debian")),
            ("VERSION", panel.sys.get("OS_VERSION", "12")), ("ARCH", os.uname().machine),
            ("HESTIA", panel.sys.get("VERSION", "")),
            ("RELEASE", panel.sys.get("RELEASE_BRANCH", "release")),
            ("UPTIME", uptime), ("LOADAVERAGE", load)]
    render(fmt, [("sysinfo", info)])


# --------------------------------------------------------------------------- command table

# name: (minimum argument count, usage text as Hestia prints it, function, password arg index)
COMMANDS = {
    "v-add-user-package": (2, "PKG_DIR PACKAGE", cmd_add_user_package, None),
    "v-list-user-package": (1, "PACKAGE [FORMAT]", cmd_list_user_package, None),
    "v-list-user-packages": (0, "[FORMAT]", cmd_list_user_packages, None),
    "v-delete-user-package": (1, "PACKAGE", cmd_delete_user_package, None),
    "v-add-user": (3, "USER PASSWORD EMAIL [PACKAGE] [NAME] ", cmd_add_user, 1),
    "v-list-user": (1, "USER [FORMAT]", cmd_list_user, None),
    "v-list-users": (0, "[FORMAT]", cmd_list_users, None),
    "v-delete-user": (1, "USER [RESTART]", cmd_delete_user, None),
    "v-change-user-package": (2, "USER PACKAGE [FORCE]", cmd_change_user_package, None),
    "v-change-user-password": (1, "USER [PASSWORD]", cmd_change_user_password, 1),
    "v-suspend-user": (1, "USER [RESTART]", cmd_suspend_user, None),
    "v-unsuspend-user": (1, "USER [RESTART]", cmd_unsuspend_user, None),
    "v-add-web-domain": (2, "USER DOMAIN [IP] [RESTART] [ALIASES] [PROXY_EXTENSIONS]",
                         cmd_add_web_domain, None),
    "v-list-web-domain": (2, "USER DOMAIN [FORMAT]", cmd_list_web_domain, None),
    "v-list-web-domains": (1, "USER [FORMAT]", cmd_list_web_domains, None),
    "v-delete-web-domain": (2, "USER DOMAIN [RESTART]", cmd_delete_web_domain, None),
    "v-change-web-domain-backend-tpl": (3, "USER DOMAIN TEMPLATE [RESTART]",
                                        cmd_change_web_domain_backend_tpl, None),
    "v-add-mail-domain": (2, "USER DOMAIN [ANTISPAM] [ANTIVIRUS] [DKIM] [DKIM_SIZE] [RESTART] "
                             "[REJECT_SPAM]", cmd_add_mail_domain, None),
    "v-list-mail-domain": (2, "USER DOMAIN [FORMAT]", cmd_list_mail_domain, None),
    "v-list-mail-domains": (1, "USER [FORMAT]", cmd_list_mail_domains, None),
    "v-delete-mail-domain": (2, "USER DOMAIN", cmd_delete_mail_domain, None),
    "v-add-mail-domain-dkim": (2, "USER DOMAIN [DKIM_SIZE]", cmd_add_mail_domain_dkim, None),
    "v-list-mail-domain-dkim-dns": (2, "USER DOMAIN [FORMAT]", cmd_list_mail_domain_dkim_dns,
                                    None),
    "v-add-mail-account": (4, "USER DOMAIN ACCOUNT PASSWORD [QUOTA]", cmd_add_mail_account, 3),
    "v-list-mail-account": (3, "USER DOMAIN ACCOUNT [FORMAT]", cmd_list_mail_account, None),
    "v-list-mail-accounts": (2, "USER DOMAIN [FORMAT]", cmd_list_mail_accounts, None),
    "v-delete-mail-account": (3, "USER DOMAIN ACCOUNT", cmd_delete_mail_account, None),
    "v-change-mail-account-password": (4, "USER DOMAIN ACCOUNT PASSWORD",
                                       cmd_change_mail_account_password, 3),
    "v-change-mail-account-quota": (4, "USER DOMAIN ACCOUNT QUOTA",
                                    cmd_change_mail_account_quota, None),
    "v-suspend-mail-account": (3, "USER DOMAIN ACCOUNT", cmd_suspend_mail_account, None),
    "v-unsuspend-mail-account": (3, "USER DOMAIN ACCOUNT", cmd_unsuspend_mail_account, None),
    "v-add-dns-domain": (3, "USER DOMAIN IP [NS1] [NS2] [NS3] [..] [NS8] [RESTART]",
                         cmd_add_dns_domain, None),
    "v-list-dns-domain": (2, "USER DOMAIN [FORMAT]", cmd_list_dns_domain, None),
    "v-list-dns-domains": (1, "USER [FORMAT]", cmd_list_dns_domains, None),
    "v-delete-dns-domain": (2, "USER DOMAIN [RESTART]", cmd_delete_dns_domain, None),
    "v-add-dns-record": (5, "USER DOMAIN RECORD TYPE VALUE [PRIORITY] [ID] [RESTART] [TTL]",
                         cmd_add_dns_record, None),
    "v-list-dns-records": (2, "USER DOMAIN [FORMAT]", cmd_list_dns_records, None),
    "v-delete-dns-record": (3, "USER DOMAIN ID [RESTART]", cmd_delete_dns_record, None),
    "v-add-letsencrypt-domain": (2, "USER DOMAIN [ALIASES] [MAIL]", cmd_add_letsencrypt_domain,
                                 None),
    "v-list-sys-info": (0, "[FORMAT]", cmd_list_sys_info, None),
}


def execute(node_dir, program, args, faults):
    """Run one command against the panel state; returns the exit code (output already printed)."""
    spec = COMMANDS.get(program)
    if spec is None:
        sys.stderr.write(f"{program}: command not found\n")
        return 127
    min_args, usage, func, _ = spec
    if len(args) < min_args:
        say(f"Usage: {program} {usage}")
        return E_ARGS
    panel = Panel(node_dir, faults)
    code = 0
    try:
        func(panel, args)
    except Fail as failure:
        say(f"Error: {failure.message}")
        code = failure.code
    except Exit as done:
        if done.text:
            say(done.text)
        code = done.code
    if panel.changed_zones:
        code = publish_zones(panel, program, args, code)
    return code


# --------------------------------------------------------------------------- faults

def load_faults(node_dir):
    """NODE/faults.json; the common empty case is answered without importing json."""
    text = read_text(os.path.join(node_dir, "faults.json")).strip()
    if not text or text == "{}":
        return {}
    import json

    return json.loads(text)


def matches(spec, program, args):
    """A fault entry applies to `program` ("*" = any) and, with "match", only when that
    substring occurs in the space-joined arguments (e.g. one domain)."""
    wanted = spec.get("program", "*")
    if wanted != "*" and wanted != program:
        return False
    needle = spec.get("match")
    return not needle or needle in " ".join(args)


def claim_rule(node_dir, faults, program, args):
    """The first rule that applies and still has `times` left; its use is counted under a lock
    in NODE/fault_counters.json so concurrent runs share the budget."""
    for index, rule in enumerate(faults.get("rules") or ()):
        if not matches(rule, program, args):
            continue
        if rule.get("times") is None:
            return rule
        if take_fault_budget(node_dir, str(index), int(rule["times"])):
            return rule
    return None


def take_fault_budget(node_dir, key, times):
    """Use one of a rule's `times`; False once they are spent. Locked: runs may overlap."""
    import fcntl
    import json

    with open(os.path.join(node_dir, "fault_counters.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = os.path.join(node_dir, "fault_counters.json")
        text = read_text(path).strip()
        counters = json.loads(text) if text else {}
        used = int(counters.get(key, 0))
        if used >= times:
            return False
        counters[key] = used + 1
        write_atomic(path, json.dumps(counters))
        return True


def launched_at():
    """When this command was started: the wrapper's ``$EPOCHREALTIME`` (bash) when present and
    plausible, else now. A simulated command is a fresh Python process whose interpreter start
    (~20 ms) happens before any of this code runs; counting from the wrapper's start puts that
    time inside the command (in ``delay_seconds`` and in the commands.log duration) instead of
    hiding it outside, so a "50 ms command" takes 50 ms as its caller sees it."""
    now = time.time()
    stamp = os.environ.get("PUQDEPLOY_SIM_STARTED", "").replace(",", ".")  # locale's point
    try:
        started = float(stamp)
    except ValueError:
        return now
    return started if now - 60 < started <= now else now


def slow_down(faults, program, args):
    """hang and stream: the panel is stuck, or talks a lot (delay_seconds: see `run`)."""
    hang = faults.get("hang")
    if hang and matches(hang, program, args):
        import signal  # a polite kill (SIGTERM) still leaves a commands.log line

        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        say(hang.get("line", f"{program}: waiting for lock..."))
        sys.stdout.flush()
        time.sleep(float(hang.get("seconds", 3600)))
    stream = faults.get("stream")
    if stream and matches(stream, program, args):
        count = int(stream.get("lines", 10))
        for number in range(1, count + 1):
            say(f"{program}: progress {number}/{count}")
            sys.stdout.flush()
            if number < count:
                time.sleep(float(stream.get("interval", 0.1)))


def run(node_dir, program, args, started):
    """The command with the node's faults; on a slow panel (delay_seconds) it ends no sooner
    than that long after it `started`, its own work included."""
    faults = load_faults(node_dir)
    try:
        return act(node_dir, program, args, faults)
    finally:
        if faults.get("delay_seconds"):
            time.sleep(max(0.0, started + float(faults["delay_seconds"]) - time.time()))


def act(node_dir, program, args, faults):
    """Faults first (slowness, then an injected failure before or after the real work)."""
    if faults:
        slow_down(faults, program, args)
    rule = claim_rule(node_dir, faults, program, args) if faults.get("rules") else None
    if rule is None:
        return execute(node_dir, program, args, faults)
    for line in rule.get("stdout_lines") or ():
        say(line)
    code = 0
    if rule.get("after"):
        code = execute(node_dir, program, args, faults)
        if code != 0:
            return code
    if rule.get("message"):
        say(rule["message"])
    return int(rule.get("exit", 1))


# --------------------------------------------------------------------------- instrumentation

def pid_alive(pid):
    """True for a live, non-zombie process (a killed child not yet reaped is not running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Recorder:
    """Marks this run in NODE/running/, detects overlap with other runs on the node, and
    appends the run's JSON line to NODE/commands.log when done.

    Overlap is symmetric: a run that finds others running flags them (``PID.overlap``), so the
    earlier run learns about a later one even when that one finished first."""

    def __init__(self, node_dir, program, args, started):
        self.node_dir = node_dir
        self.program = program
        self.args = masked_args(program, args)
        self.pid = os.getpid()
        self.start = started
        self.running = os.path.join(node_dir, "running")
        os.makedirs(self.running, exist_ok=True)
        self.marker = os.path.join(self.running, str(self.pid))
        self.flag = self.marker + ".overlap"
        remove_file(self.flag)
        with open(self.marker, "w") as handle:
            handle.write(f"{self.program} {self.start}\n")
        self.overlap = self.scan(flag_others=True)

    def scan(self, flag_others):
        found = False
        names = set(os.listdir(self.running))
        for name in names:
            if name.endswith(".overlap") and name[:-8] not in names and name[:-8].isdigit() \
                    and int(name[:-8]) != self.pid:
                remove_file(os.path.join(self.running, name))  # left by a finished run
            if not name.isdigit() or int(name) == self.pid:
                continue
            if pid_alive(int(name)):
                found = True
                if flag_others:
                    open(os.path.join(self.running, name + ".overlap"), "a").close()
            else:
                remove_file(os.path.join(self.running, name))
                remove_file(os.path.join(self.running, name + ".overlap"))
        return found

    def finish(self, code):
        end = time.time()
        overlap = self.overlap or os.path.exists(self.flag) or self.scan(flag_others=False)
        remove_file(self.marker)
        remove_file(self.flag)
        argv = ", ".join(f'"{jstr(a)}"' for a in self.args)
        line = (f'{{"pid": {self.pid}, "program": "{jstr(self.program)}", "argv": [{argv}], '
                f'"start": {self.start!r}, "end": {end!r}, "exit": {code}, '
                f'"overlap": {"true" if overlap else "false"}}}\n')
        fd = os.open(os.path.join(self.node_dir, "commands.log"),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)


def masked_args(program, args):
    """argv as received, except a literal password (Hestia's HIDE position, not a /tmp/ file)
    which is logged as ****** — so the log never holds a password, and a test can still see
    that a caller passed one on the command line."""
    spec = COMMANDS.get(program)
    hide = spec[3] if spec else None
    args = list(args)
    if hide is not None and len(args) > hide and args[hide]:
        value = args[hide]
        if not (value.startswith("/tmp/") and "../" not in value and os.path.isfile(value)):
            args[hide] = "******"
    return args


def main(argv):
    """Entry point: ``NODE_DIR PROGRAM ARGS...``; returns the exit code."""
    if len(argv) < 2:
        sys.stderr.write("usage: hestia_sim.py NODE_DIR PROGRAM [ARGS...]\n")
        return 2
    node_dir, program, args = os.path.abspath(argv[0]), argv[1], argv[2:]
    if not os.path.isdir(os.path.join(node_dir, "data")):
        sys.stderr.write(f"hestia_sim: {node_dir} is not a simulated node (no data/)\n")
        return 1
    started = launched_at()
    recorder = Recorder(node_dir, program, args, started)
    code = 1
    try:
        code = run(node_dir, program, args, started)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
        raise
    finally:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            pass
        recorder.finish(code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
