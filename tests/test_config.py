"""Config loading: the example works, and every kind of mistake names the file and dotted key."""

from __future__ import annotations

import copy
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from puqdeploy import config as cfgmod
from puqdeploy.config import (
    DEFAULT_LIMITS,
    LIMIT_KEYS,
    Config,
    NodeConfig,
    ProductConfig,
    load_config,
    parse_limit_overrides,
)
from puqdeploy.errors import ConfigError, NotFoundError, UsageError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"

BASE: dict = {
    "database": "/var/lib/puqdeploy/puqdeploy.db",
    "nodes": {
        "web1": {"host": "127.0.0.1", "transport": "local", "hestia_bin": "/opt/hestia/bin",
                 "roles": ["web", "mail"]},
        "mail1": {"host": "127.0.0.2", "transport": "local", "roles": ["mail"]},
        "ns1": {"host": "127.0.0.3", "transport": "local", "roles": ["dns"]},
    },
    "groups": {"eu": {"nodes": ["web1", "mail1", "ns1"], "nameservers": ["ns1.example.net"]}},
    "products": {
        "split": {"mode": "split", "group": "eu"},
        "unified": {"mode": "unified", "group": "eu"},
        "vanity": {"mode": "vanity", "group": "eu",
                   "parent_domains": {"example.net": {"dns": "push", "mail_user": "provider",
                                                      "mail_node": "mail1"}}},
    },
}


def write(tmp_path: Path, data: dict | str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return str(path)


def base() -> dict:
    return copy.deepcopy(BASE)


def load_error(tmp_path: Path, data: dict | str) -> ConfigError:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert str(err).startswith(f"{path}: "), str(err)
    assert err.path == path
    assert err.exit_code == 2
    return err


# ---------------------------------------------------------------- the example and the basics


def test_example_loads_with_every_section():
    c = load_config(str(EXAMPLE))
    assert c.path == str(EXAMPLE)
    assert set(c.nodes) == {"web1", "mail1", "ns1", "ns2"}
    assert set(c.products) == {"business-split", "business-unified", "sites-vanity"}
    split = c.product("business-split")
    assert split.backend_template == "PHP-8_3"
    assert split.limits["web_disk_quota"] == 10240
    assert split.limits["dns_records"] == "unlimited"
    assert split.limits["web_bandwidth"] == DEFAULT_LIMITS["web_bandwidth"]
    assert tuple(split.limits) == LIMIT_KEYS
    vanity = c.product("sites-vanity")
    assert vanity.parent_domains["example.net"].dns == "push"
    assert vanity.parent_domains["example.net"].mail_node == "mail1"
    assert vanity.parent_domains["example.org"].dns == "external"
    assert vanity.parent_domains["example.org"].mail_user is None
    mail1 = c.node("mail1")
    assert mail1.sudo and mail1.host_key.startswith("ssh-ed25519 AAAA")
    assert mail1.key_file == str(EXAMPLE.parent / "id_ed25519")  # relative to the config
    assert c.node("ns2").ip == "2001:db8::53"
    assert c.groups["eu"].reserved_names == ("shop", "support", "billing", "status")
    assert c.tickets.whmcs is not None and c.tickets.whmcs.priority == "High"
    assert c.runner.heartbeat == 100


def test_defaults_for_a_minimal_config(tmp_path):
    c = load_config(write(tmp_path, base()))
    assert c.database == "/var/lib/puqdeploy/puqdeploy.db"
    assert c.key_file == "/var/lib/puqdeploy/secret.key"
    assert c.log_dir == "/var/log/puqdeploy"
    assert c.runner.budget_seconds == 55 and c.runner.workers == 8
    assert c.runner.heartbeat_seconds is None and c.runner.heartbeat == 100
    assert (c.retry.max_attempts, c.retry.base_seconds, c.retry.factor) == (8, 30, 2)
    assert c.dns.resolvers == ("1.1.1.1", "9.9.9.9")
    assert c.ssl.enabled and c.tickets.enabled is False
    node = c.node("mail1")
    assert (node.port, node.user, node.capacity, node.max_concurrency) == (22, "root", 500, 1)
    assert node.ip == "127.0.0.2" and node.roles == frozenset({"mail"})
    assert c.product("split").limits == DEFAULT_LIMITS
    assert c.product("split").backend_template is None


def test_empty_file_is_all_defaults(tmp_path):
    c = load_config(write(tmp_path, ""))
    assert c.nodes == {} and c.products == {}


def test_path_from_environment(tmp_path, monkeypatch):
    path = write(tmp_path, base())
    monkeypatch.setenv("PUQDEPLOY_CONFIG", path)
    assert load_config(None).path == path
    assert load_config().path == path


def test_default_path_when_nothing_given(monkeypatch):
    monkeypatch.delenv("PUQDEPLOY_CONFIG", raising=False)
    if os.path.exists(cfgmod.DEFAULT_CONFIG_PATH):
        pytest.skip("a real /etc/puqdeploy/config.yaml exists here")
    with pytest.raises(ConfigError) as info:
        load_config(None)
    assert str(info.value).startswith("/etc/puqdeploy/config.yaml: (file): cannot read")


# ---------------------------------------------------------------- file-level errors


def test_missing_file_names_the_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: (file): cannot read: No such file or directory"


def test_yaml_syntax_error_names_the_line(tmp_path):
    text = "runner:\n  workers: 4\nnodes:\n  web1: {host: [1.2.3.4\n"
    err = load_error(tmp_path, text)
    assert err.key.startswith("line ")
    assert "YAML syntax error" in err.problem


def test_yaml_syntax_error_line_is_the_bad_line(tmp_path):
    text = "runner:\n  workers: 4\n  budget_seconds: 5: 6\n"
    err = load_error(tmp_path, text)
    assert err.key == "line 3", str(err)


def test_duplicate_keys_are_refused_with_their_line(tmp_path):
    text = "runner:\n  workers: 4\n  workers: 5\n"
    err = load_error(tmp_path, text)
    assert err.key == "line 3" and "duplicate key 'workers'" in err.problem


def test_top_level_must_be_a_mapping(tmp_path):
    err = load_error(tmp_path, "- a\n- b\n")
    assert err.key == "(top level)" and "mapping" in err.problem


# ---------------------------------------------------------------- key errors


def test_unknown_key_with_suggestion_and_line(tmp_path):
    text = textwrap.dedent("""\
        nodes:
          web1:
            host: 127.0.0.1
            transport: local
            roles: [web]
            prot: 2222
        """)
    err = load_error(tmp_path, text)
    assert err.key == "nodes.web1.prot"
    assert err.problem == "unknown key (did you mean port?) (line 6)"
    assert str(err).endswith("nodes.web1.prot: unknown key (did you mean port?) (line 6)")


def test_unknown_top_level_key_without_close_match(tmp_path):
    data = base()
    data["zzzz"] = 1
    err = load_error(tmp_path, data)
    assert err.key == "zzzz" and "unknown key (known: database" in err.problem


def test_unknown_limit_key_suggests(tmp_path):
    data = base()
    data["products"]["split"]["limits"] = {"web_disk_qouta": 5}
    err = load_error(tmp_path, data)
    assert err.key == "products.split.limits.web_disk_qouta"
    assert "did you mean web_disk_quota?" in err.problem


@pytest.mark.parametrize(
    "mutate, key, words",
    [
        (lambda d: d["nodes"]["web1"].update(port="22"), "nodes.web1.port", "must be an integer"),
        (lambda d: d["nodes"]["web1"].update(sudo="yes please"), "nodes.web1.sudo",
         "true or false"),
        (lambda d: d.update(runner={"workers": 1.5}), "runner.workers", "must be an integer"),
        (lambda d: d.update(runner={"budget_seconds": "fast"}), "runner.budget_seconds",
         "must be a number"),
        (lambda d: d["nodes"]["web1"].update(roles="web"), "nodes.web1.roles", "must be a list"),
        (lambda d: d["products"]["split"].update(php=8.3), "products.split.php", "quote it"),
        (lambda d: d.update(dns={"resolvers": ["dns.google"]}), "dns.resolvers",
         "not an IP address"),
        (lambda d: d["groups"].update(eu=["web1"]), "groups.eu", "must be a mapping"),
        (lambda d: d["products"]["split"].update(limits={"web_databases": -1}),
         "products.split.limits.web_databases", "whole number"),
        (lambda d: d["products"]["split"].update(limits={"web_databases": "lots"}),
         "products.split.limits.web_databases", "whole number"),
    ],
)
def test_wrong_types(tmp_path, mutate, key, words):
    data = base()
    mutate(data)
    err = load_error(tmp_path, data)
    assert err.key == key, str(err)
    assert words in err.problem, str(err)


@pytest.mark.parametrize(
    "mutate, key, words",
    [
        (lambda d: d["nodes"]["web1"].update(port=70000), "nodes.web1.port",
         "between 1 and 65535"),
        (lambda d: d["nodes"]["web1"].update(port=0), "nodes.web1.port", "between 1 and 65535"),
        (lambda d: d["nodes"]["web1"].update(capacity=0), "nodes.web1.capacity", "at least 1"),
        (lambda d: d["nodes"]["web1"].update(max_concurrency=0), "nodes.web1.max_concurrency",
         "between 1 and 256"),
        (lambda d: d.update(runner={"workers": 0}), "runner.workers", "between 1 and 1024"),
        (lambda d: d.update(runner={"lease_seconds": 0}), "runner.lease_seconds",
         "greater than 0"),
        (lambda d: d.update(runner={"lease_seconds": 30, "heartbeat_seconds": 30}),
         "runner.heartbeat_seconds", "shorter than lease_seconds"),
        (lambda d: d.update(retry={"jitter": 1.5}), "retry.jitter", "between 0 and 1"),
        (lambda d: d.update(retry={"factor": 0.5}), "retry.factor", "at least 1"),
        (lambda d: d.update(retry={"max_attempts": 0}), "retry.max_attempts",
         "between 1 and 1000"),
        (lambda d: d.update(retry={"base_seconds": 60, "max_seconds": 10}), "retry.max_seconds",
         "at least base_seconds"),
        (lambda d: d.update(dns={"port": 65536}), "dns.port", "between 1 and 65535"),
        (lambda d: d.update(ssl={"recheck_seconds": float("inf")}), "ssl.recheck_seconds",
         "finite"),
        (lambda d: d["groups"]["eu"].update(nameservers=[f"ns{i}.example.net" for i in range(9)]),
         "groups.eu.nameservers", "at most 8"),
        (lambda d: d["groups"]["eu"].update(nameservers=[]), "groups.eu.nameservers",
         "at least 1"),
    ],
)
def test_bad_ranges(tmp_path, mutate, key, words):
    data = base()
    mutate(data)
    err = load_error(tmp_path, data)
    assert err.key == key, str(err)
    assert words in err.problem, str(err)


@pytest.mark.parametrize(
    "mutate, key, words",
    [
        (lambda d: d["nodes"]["web1"].update(roles=["web", "ftp"]), "nodes.web1.roles",
         "unknown role 'ftp'"),
        (lambda d: d["nodes"]["web1"].update(roles=[]), "nodes.web1.roles", "at least 1"),
        (lambda d: d["nodes"]["web1"].update(transport="telnet"), "nodes.web1.transport",
         "one of ssh, local"),
        (lambda d: d["nodes"]["web1"].update(ip="web1.example.net"), "nodes.web1.ip",
         "must be an IP address"),
        (lambda d: d["products"]["split"].update(mode="shared"), "products.split.mode",
         "one of split, unified, vanity"),
        (lambda d: d["products"]["split"].update(php="eight"), "products.split.php",
         "version like"),
        (lambda d: d["groups"]["eu"].update(nameservers=["ns1..example.net"]),
         "groups.eu.nameservers", "invalid domain"),
        (lambda d: d["groups"]["eu"].update(nodes=["web1", "web1"]), "groups.eu.nodes",
         "twice"),
        (lambda d: d["nodes"].update({"bad name": {"host": "127.0.0.9", "transport": "local",
                                                   "roles": ["web"]}}),
         "nodes.bad name", "names are"),
        (lambda d: d["products"]["split"].pop("group"), "products.split.group",
         "required key is missing"),
        (lambda d: d.update(tickets={"enabled": True}), "tickets.enabled",
         "neither tickets.whmcs nor tickets.command"),
        (lambda d: d.update(tickets={"whmcs": {"url": "ftp://x", "identifier": "i",
                                               "secret": "s"}}),
         "tickets.whmcs.url", "http(s) URL"),
        (lambda d: d.update(tickets={"whmcs": {"url": "https://x/api.php", "identifier": "i",
                                               "secret": "s", "priority": "Urgent"}}),
         "tickets.whmcs.priority", "Low, Medium, High"),
        (lambda d: d.update(tickets={"whmcs": {"url": "https://x/api.php", "identifier": "i"}}),
         "tickets.whmcs.secret", "required"),
    ],
)
def test_bad_values(tmp_path, mutate, key, words):
    data = base()
    mutate(data)
    err = load_error(tmp_path, data)
    assert err.key == key, str(err)
    assert words in err.problem, str(err)


def test_error_carries_the_line_of_the_bad_value(tmp_path):
    text = textwrap.dedent("""\
        runner:
          workers: 4
        retry:
          max_attempts: 3
          jitter: 2
        """)
    err = load_error(tmp_path, text)
    assert err.key == "retry.jitter" and err.problem.endswith("(line 5)")


# ---------------------------------------------------------------- cross-checks


def test_group_with_unknown_node(tmp_path):
    data = base()
    data["groups"]["eu"]["nodes"].append("web9")
    err = load_error(tmp_path, data)
    assert err.key == "groups.eu.nodes"
    assert "unknown node 'web9'" in err.problem and "known: mail1, ns1, web1" in err.problem


def test_vanity_without_parent_domains(tmp_path):
    data = base()
    del data["products"]["vanity"]["parent_domains"]
    err = load_error(tmp_path, data)
    assert err.key == "products.vanity.parent_domains"
    assert "at least one parent domain" in err.problem


def test_parent_domains_only_for_vanity(tmp_path):
    data = base()
    data["products"]["split"]["parent_domains"] = {"example.net": {"dns": "external"}}
    err = load_error(tmp_path, data)
    assert err.key == "products.split.parent_domains" and "only vanity" in err.problem


def test_product_with_unknown_group(tmp_path):
    data = base()
    data["products"]["split"]["group"] = "us"
    err = load_error(tmp_path, data)
    assert err.key == "products.split.group" and "unknown group 'us'" in err.problem


def test_split_needs_every_role_in_its_group(tmp_path):
    data = base()
    data["groups"]["web-only"] = {"nodes": ["web1"], "nameservers": ["ns1.example.net"]}
    data["products"]["split"]["group"] = "web-only"
    data["nodes"]["web1"]["roles"] = ["web"]
    del data["products"]["unified"]
    err = load_error(tmp_path, data)
    assert err.key == "products.split.group"
    assert "no node with role mail" in err.problem


def test_unified_needs_one_node_with_web_and_mail(tmp_path):
    data = base()
    data["nodes"]["web1"]["roles"] = ["web"]
    err = load_error(tmp_path, data)
    assert err.key == "products.unified.group" and "both web and mail" in err.problem


def test_vanity_push_needs_a_dns_node(tmp_path):
    data = base()
    data["groups"]["nodns"] = {"nodes": ["web1", "mail1"], "nameservers": ["ns1.example.net"]}
    data["products"]["vanity"]["group"] = "nodns"
    err = load_error(tmp_path, data)
    assert err.key == "products.vanity.parent_domains" and "role dns" in err.problem


@pytest.mark.parametrize(
    "parent, key, words",
    [
        ({"dns": "push", "mail_user": "provider", "mail_node": "ns1"},
         "products.vanity.parent_domains.example.net.mail_node", "role mail"),
        ({"dns": "push", "mail_user": "provider", "mail_node": "mail9"},
         "products.vanity.parent_domains.example.net.mail_node", "unknown node 'mail9'"),
        ({"dns": "push", "mail_user": "provider"},
         "products.vanity.parent_domains.example.net.mail_node", "go together"),
        ({"dns": "wildcard"}, "products.vanity.parent_domains.example.net.dns",
         "one of push, external"),
        ({"mail_user": "provider", "mail_node": "mail1"},
         "products.vanity.parent_domains.example.net.dns", "required"),
    ],
)
def test_parent_domain_checks(tmp_path, parent, key, words):
    data = base()
    data["products"]["vanity"]["parent_domains"] = {"example.net": parent}
    err = load_error(tmp_path, data)
    assert err.key == key, str(err)
    assert words in err.problem, str(err)


def test_parent_domain_name_is_validated_and_normalized(tmp_path):
    data = base()
    data["products"]["vanity"]["parent_domains"] = {"Example.NET.": {"dns": "external"}}
    c = load_config(write(tmp_path, data))
    assert list(c.product("vanity").parent_domains) == ["example.net"]
    data["products"]["vanity"]["parent_domains"] = {"bad;name.net": {"dns": "external"}}
    err = load_error(tmp_path, data)
    assert err.key == "products.vanity.parent_domains.bad;name.net"


def test_mail_node_outside_the_group(tmp_path):
    data = base()
    data["nodes"]["mail2"] = {"host": "127.0.0.4", "transport": "local", "roles": ["mail"]}
    data["products"]["vanity"]["parent_domains"]["example.net"]["mail_node"] = "mail2"
    err = load_error(tmp_path, data)
    assert err.key.endswith(".mail_node") and "in group 'eu'" in err.problem


def test_ssh_node_needs_credentials_and_host_key_source(tmp_path):
    data = base()
    data["nodes"]["web1"] = {"host": "203.0.113.10", "roles": ["web", "mail"],
                             "known_hosts": "kh"}
    err = load_error(tmp_path, data)
    assert err.key == "nodes.web1.key_file" and "key_file (preferred) or password" in err.problem
    data["nodes"]["web1"] = {"host": "203.0.113.10", "roles": ["web", "mail"], "key_file": "k"}
    err = load_error(tmp_path, data)
    assert err.key == "nodes.web1.known_hosts" and "host_key" in err.problem
    data["nodes"]["web1"]["password"] = "x"  # password instead of a key is allowed
    data["nodes"]["web1"].pop("key_file")
    data["nodes"]["web1"]["known_hosts"] = "kh"
    assert load_config(write(tmp_path, data)).node("web1").password == "x"


def test_ssh_node_with_a_host_name_needs_ip(tmp_path):
    data = base()
    data["nodes"]["web1"] = {"host": "web1.example.net", "roles": ["web", "mail"],
                             "key_file": "k", "known_hosts": "kh"}
    err = load_error(tmp_path, data)
    assert err.key == "nodes.web1.ip" and "required" in err.problem
    data["nodes"]["web1"]["ip"] = "203.0.113.10"
    assert load_config(write(tmp_path, data)).node("web1").ip == "203.0.113.10"


def test_ssh_hestia_bin_must_be_absolute(tmp_path):
    data = base()
    data["nodes"]["web1"] = {"host": "203.0.113.10", "roles": ["web", "mail"], "key_file": "k",
                             "known_hosts": "kh", "hestia_bin": "bin"}
    err = load_error(tmp_path, data)
    assert err.key == "nodes.web1.hestia_bin" and "absolute" in err.problem


@pytest.mark.parametrize("line", [
    "ssh-ed25519",
    "ssh-foo AAAAC3NzaC1lZDI1NTE5AAAAICLTsTNK8r+T8AwoFGk4dRFWwUSryDIYuuchSLRqRsNy",
    "ssh-ed25519 !!!notbase64",
    "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAICLTsTNK8r+T8AwoFGk4dRFWwUSryDIYuuchSLRqRsNy",
])
def test_bad_host_keys(tmp_path, line):
    data = base()
    data["nodes"]["web1"] = {"host": "203.0.113.10", "roles": ["web", "mail"], "key_file": "k",
                             "host_key": line}
    err = load_error(tmp_path, data)
    assert err.key == "nodes.web1.host_key"


def test_host_key_comment_is_dropped(tmp_path):
    data = base()
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICLTsTNK8r+T8AwoFGk4dRFWwUSryDIYuuchSLRqRsNy"
    data["nodes"]["web1"] = {"host": "203.0.113.10", "roles": ["web", "mail"], "key_file": "k",
                             "host_key": key + " root@web1"}
    assert load_config(write(tmp_path, data)).node("web1").host_key == key


def test_one_server_under_two_node_names_is_refused(tmp_path):
    data = base()
    ssh = {"host": "203.0.113.10", "roles": ["web"], "key_file": "k", "known_hosts": "kh"}
    data["nodes"]["a"] = dict(ssh)
    data["nodes"]["b"] = dict(ssh, roles=["mail"])
    err = load_error(tmp_path, data)
    assert err.key == "nodes.b.host" and "same server as node 'a'" in err.problem
    data["nodes"]["b"]["port"] = 2222  # another sshd (e.g. a container) is another server
    assert load_config(write(tmp_path, data)).node("b").port == 2222


def test_node_in_several_groups(tmp_path):
    data = base()
    data["groups"]["us"] = {"nodes": ["web1", "ns1"], "nameservers": ["ns1.example.com"]}
    c = load_config(write(tmp_path, data))
    assert [n.name for n in c.group_nodes("us", "web")] == ["web1"]
    assert [n.name for n in c.group_nodes("eu", "web")] == ["web1"]


# ---------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_config_dir(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "zones").mkdir()
    (conf_dir / "zones" / "eu.tpl").write_text("@ A {server_ip}\n")
    data = base()
    data["database"] = "state/puq.db"
    data["log_dir"] = "../logs"
    data["nodes"]["web1"]["hestia_bin"] = "sandbox/bin"
    data["nodes"]["ssh1"] = {"host": "203.0.113.10", "roles": ["web"], "key_file": "keys/id",
                             "known_hosts": "./known_hosts"}
    data["groups"]["eu"]["dns_template"] = "zones/eu.tpl"
    data["products"]["split"]["dns_template"] = "zones/../zones/eu.tpl"
    path = write(conf_dir, data)
    monkeypatch.chdir(tmp_path)  # must not depend on the working directory
    c = load_config(os.path.relpath(path))
    assert c.database == str(conf_dir / "state" / "puq.db")
    assert c.key_file == str(conf_dir / "state" / "secret.key")
    assert c.log_dir == str(tmp_path / "logs")
    assert c.node("web1").hestia_bin == str(conf_dir / "sandbox" / "bin")
    assert c.node("ssh1").key_file == str(conf_dir / "keys" / "id")
    assert c.node("ssh1").known_hosts == str(conf_dir / "known_hosts")
    assert c.node("ssh1").hestia_bin == "/usr/local/hestia/bin"
    assert c.groups["eu"].dns_template == str(conf_dir / "zones" / "eu.tpl")
    assert c.product("split").dns_template == str(conf_dir / "zones" / "eu.tpl")
    assert c.path == path


def test_explicit_key_file(tmp_path):
    data = base()
    data["key_file"] = "secret/box.key"
    c = load_config(write(tmp_path, data))
    assert c.key_file == str(tmp_path / "secret" / "box.key")


def test_missing_template_file(tmp_path):
    data = base()
    data["groups"]["eu"]["dns_template"] = "zones/none.tpl"
    err = load_error(tmp_path, data)
    assert err.key == "groups.eu.dns_template" and "not found" in err.problem


# ---------------------------------------------------------------- immutability and API


def test_objects_are_immutable(tmp_path):
    c = load_config(write(tmp_path, base()))
    with pytest.raises(AttributeError):  # FrozenInstanceError
        c.database = "/tmp/x"  # type: ignore[misc]
    with pytest.raises(AttributeError):  # FrozenInstanceError
        c.node("web1").port = 2222  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.nodes["web2"] = c.node("web1")  # type: ignore[index]
    with pytest.raises(TypeError):
        c.product("split").limits["web_disk_quota"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        c.product("vanity").parent_domains["x.net"] = None  # type: ignore[index]
    with pytest.raises(AttributeError):
        c.node("web1").roles.add("dns")  # type: ignore[attr-defined]
    assert isinstance(c.groups["eu"].nodes, tuple)
    assert isinstance(c.groups["eu"].nameservers, tuple)
    assert isinstance(c.dns.resolvers, tuple)
    with pytest.raises(TypeError):
        DEFAULT_LIMITS["web_disk_quota"] = 1  # type: ignore[index]


def test_secrets_stay_out_of_repr(tmp_path):
    data = base()
    data["nodes"]["web1"]["password"] = "Sup3rSecretPw"
    data["tickets"] = {"whmcs": {"url": "https://b.example/api.php", "identifier": "id",
                                 "secret": "whmcs-secret-value"}}
    c = load_config(write(tmp_path, data))
    assert "Sup3rSecretPw" not in repr(c)
    assert "whmcs-secret-value" not in repr(c)
    assert c.tickets.whmcs.secret == "whmcs-secret-value"


def test_product_node_group_lookups(tmp_path):
    c = load_config(write(tmp_path, base()))
    with pytest.raises(UsageError) as info:
        c.product("gold")
    assert str(info.value) == "unknown product 'gold' (known: split, unified, vanity)"
    with pytest.raises(NotFoundError) as nf:
        c.node("web9")
    assert "unknown node 'web9'" in str(nf.value) and nf.value.exit_code == 4
    assert [n.name for n in c.group_nodes("eu", "mail")] == ["web1", "mail1"]
    assert [n.name for n in c.group_nodes("eu", "dns")] == ["ns1"]
    with pytest.raises(UsageError):
        c.group_nodes("us", "web")
    with pytest.raises(UsageError):
        c.group_nodes("eu", "ftp")


def test_group_nodes_active_only(tmp_path):
    data = base()
    data["nodes"]["mail1"]["active"] = False
    c = load_config(write(tmp_path, data))
    assert [n.name for n in c.group_nodes("eu", "mail")] == ["web1", "mail1"]
    assert [n.name for n in c.group_nodes("eu", "mail", active_only=True)] == ["web1"]


def test_hand_built_objects_get_the_loaded_shapes():
    node = NodeConfig(name="n", host="10.0.0.1", roles=["web"])
    assert node.ip == "10.0.0.1" and node.roles == frozenset({"web"})
    product = ProductConfig(name="p", mode="split", group="g", limits={"web_disk_quota": 7})
    assert product.limits["web_disk_quota"] == 7 and product.limits["mail_accounts"] == 5
    with pytest.raises(TypeError):
        product.limits["web_disk_quota"] = 1  # type: ignore[index]
    c = Config(path="/x/config.yaml", database="/data/p.db", nodes={"n": node})
    assert c.key_file == "/data/secret.key"
    with pytest.raises(TypeError):
        c.nodes["m"] = node  # type: ignore[index]


def test_null_values_take_defaults(tmp_path):
    text = "runner:\nretry:\n  max_attempts:\nnodes:\n"
    c = load_config(write(tmp_path, text))
    assert c.runner.workers == 8 and c.retry.max_attempts == 8


# ---------------------------------------------------------------- --set overrides


def test_parse_limit_overrides():
    assert parse_limit_overrides([]) == {}
    assert parse_limit_overrides(["web_disk_quota=2048", "mail_accounts=unlimited",
                                  "web_disk_quota=4096", " dns_records = 0 "]) == {
        "web_disk_quota": 4096, "mail_accounts": "unlimited", "dns_records": 0}


@pytest.mark.parametrize("pair, words", [
    ("web_disk_qouta=5", "did you mean web_disk_quota?"),
    ("colour=5", "known: web_disk_quota, web_bandwidth"),
    ("web_disk_quota", "KEY=VALUE"),
    ("=5", "KEY=VALUE"),
    ("web_disk_quota=-1", "whole number"),
    ("web_disk_quota=1.5", "whole number"),
    ("web_disk_quota=lots", "whole number"),
    ("web_disk_quota=", "whole number"),
    ("web_disk_quota=99999999999", "whole number"),
])
def test_parse_limit_overrides_errors(pair, words):
    with pytest.raises(UsageError) as info:
        parse_limit_overrides([pair])
    assert words in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("text", [
    "127.0.0.1", "0.0.0.0", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3", "1.2.3.4.5",
    "a.b.c.d", " 10.0.0.1 ", "\u0661.2.3.4", "1.2.3.-4", "", "example.com", "1..2.3", "0.0.0.00",
    "+1.2.3.4", "1.2.3.4\n", "::1", "2001:DB8::1", "fe80::1%eth0", "1:2", "::ffff:1.2.3.4"])
def test_ip_literals_are_recognised_exactly_as_ipaddress_does(text):
    """The config checks dotted quads itself (ipaddress is slow to import): same verdicts."""
    import ipaddress

    from puqdeploy.config import _ip_literal

    try:
        expected = str(ipaddress.ip_address(text.strip()))
    except ValueError:
        expected = None
    assert _ip_literal(text) == expected
