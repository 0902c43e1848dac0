"""Input rules: HestiaCP's own plus DNS, checked before anything is written."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from puqdeploy import validate
from puqdeploy.errors import UsageError


# ---------------------------------------------------------------- service id


@pytest.mark.parametrize("value", ["1234", "svc.1_a-b", "A" * 64])
def test_service_id_accepts(value):
    assert validate.service_id(value) == value


@pytest.mark.parametrize("value", ["", "a" * 65, "12 34", "12/34", "id\n", "ünï", 1234])
def test_service_id_rejects(value):
    with pytest.raises(UsageError, match="service id"):
        validate.service_id(value)


# ---------------------------------------------------------------- domain


@pytest.mark.parametrize("given, expected", [
    ("example.com", "example.com"),
    ("Example.COM.", "example.com"),
    ("  shop.example.net  ", "shop.example.net"),
    ("münchen.de", "xn--mnchen-3ya.de"),
    ("MÜNCHEN.DE", "xn--mnchen-3ya.de"),
    ("xn--mnchen-3ya.de", "xn--mnchen-3ya.de"),
    ("XN--MNCHEN-3YA.DE", "xn--mnchen-3ya.de"),
    ("www.example.com", "www.example.com"),
    ("a-b.c-d.example", "a-b.c-d.example"),
    ("1234.com", "1234.com"),
    ("a" * 63 + ".com", "a" * 63 + ".com"),
    ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
])
def test_domain_accepts_and_normalizes(given, expected):
    assert validate.domain(given) == expected


@pytest.mark.parametrize("value", [
    "ex;ample.com", "$(reboot).com", "a..b", "", "   ", "a" * 300, ".".join(["a" * 60] * 5),
    "-a.com", "a.com-", "1234", "localhost", "www", ".example.com", "example.com..",
    "exa mple.com", "exa\nmple.com", "ex\tample.com", "under_score.com", "a/b.com",
    "`id`.com", "x'y.com", 'x"y.com', "a|b.com", "a%b.com", "a.-b.com", "a.b-.com",
    "1.2.3.4", "a.123", "a" * 64 + ".com", "xn--zz-.com", "xn--a.com", "ex:ample.com",
    "ex\x00ample.com", "\u00adex.com", "ｅｘａｍｐｌｅ.com", "xn--abc.de",
    "xn--mnchen-zzzz.de",
])
def test_domain_rejects(value):
    with pytest.raises(UsageError) as info:
        validate.domain(value)
    message = str(info.value)
    assert message.startswith("invalid domain ")
    assert "\n" not in message  # a hostile value cannot forge extra log lines
    assert len(message) < 200


def test_domain_message_names_the_value():
    with pytest.raises(UsageError, match=r"invalid domain 'ex;ample.com': contains ;"):
        validate.domain("ex;ample.com")


def test_domain_rejects_non_strings():
    with pytest.raises(UsageError):
        validate.domain(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- usernames


@pytest.mark.parametrize("given, expected", [
    ("ab", "ab"), ("Customer1", "customer1"), ("ex-com_web", "ex-com_web"),
    ("a" * 30, "a" * 30),
])
def test_username_accepts(given, expected):
    assert validate.username(given) == expected


@pytest.mark.parametrize("value", [
    "a", "a" * 31, "1abc", "-abc", "abc-", "ab.c", "ab c", "abc\n", "ab$c", "",
    "mysql", "sudo", "aria_log", "root", "admin", "www-data", "Root", "systemd-x",
])
def test_username_rejects(value):
    with pytest.raises(UsageError, match="invalid username"):
        validate.username(value)


def test_derive_username_base():
    assert validate.derive_username_base("example.com", "-web", lambda n: False) == \
        "examplecom-web"
    assert validate.derive_username_base("example.com", "", lambda n: False) == "examplecom"
    assert validate.derive_username_base("123.example", "-web", lambda n: False) == \
        "u123example-web"
    assert validate.derive_username_base("xn--mnchen-3ya.de", "-mail", lambda n: False) == \
        "xnmnchen3yade-mail"


def test_derive_username_truncates_to_30():
    name = validate.derive_username_base("a" * 60 + ".com", "-mail", lambda n: False)
    assert name == "a" * 25 + "-mail" and len(name) == 30


def test_derive_username_collision_inserts_a_number():
    taken = {"examplecom-web", "examplecom2-web"}
    assert validate.derive_username_base("example.com", "-web", taken.__contains__) == \
        "examplecom3-web"
    long_taken = {"a" * 26 + "-web"}
    name = validate.derive_username_base("a" * 40 + ".com", "-web", long_taken.__contains__)
    assert name == "a" * 25 + "2-web" and len(name) == 30


def test_derive_username_skips_reserved_names():
    # "admi.n" would give "admin": a system account, so it must not be chosen
    assert validate.derive_username_base("admi.n", "", lambda n: False) == "admin2"


def test_derive_username_set_shares_one_base():
    taken = {"examplecom-mail"}
    names = validate.derive_username_set("example.com", ["-web", "-mail", "-dns"],
                                         taken.__contains__)
    assert names == {"-web": "examplecom2-web", "-mail": "examplecom2-mail",
                     "-dns": "examplecom2-dns"}
    free = validate.derive_username_set("example.com", ["-web", "-mail", "-dns"],
                                        lambda n: False)
    assert free == {"-web": "examplecom-web", "-mail": "examplecom-mail",
                    "-dns": "examplecom-dns"}


def test_derive_username_set_fits_the_longest_suffix():
    names = validate.derive_username_set("b" * 50 + ".net", ["-web", "-mail"], lambda n: False)
    assert names == {"-web": "b" * 25 + "-web", "-mail": "b" * 25 + "-mail"}
    for name in names.values():
        assert validate.username(name) == name


def test_derived_names_always_pass_the_rule():
    for dom in ["example.com", "9gag.com", "a.b", "xn--r8jz45g.xn--zckzah", "q" * 63 + ".io"]:
        for suffix in ["", "-web", "-mail", "-dns"]:
            name = validate.derive_username_base(dom, suffix, lambda n: False)
            assert validate.username(name) == name


# ---------------------------------------------------------------- email, mailbox


@pytest.mark.parametrize("given, expected", [
    ("user@example.com", "user@example.com"),
    ("First.Last+tag@Example.COM", "First.Last+tag@example.com"),
    (" a_b%c@sub.example.co ", "a_b%c@sub.example.co"),
])
def test_email_accepts(given, expected):
    assert validate.email(given) == expected


@pytest.mark.parametrize("value", [
    "", "user", "user@", "@example.com", "user@example", "user@example.c", "us er@example.com",
    "user@exa\nmple.com", "user@exa_mple.com", "a@b@example.com", "user@example.c0m",
])
def test_email_rejects(value):
    with pytest.raises(UsageError, match="invalid email"):
        validate.email(value)


@pytest.mark.parametrize("given, expected", [("info", "info"), ("First.Last", "first.last"),
                                              ("a_b-c", "a_b-c"), ("x" * 64, "x" * 64)])
def test_mail_localpart_accepts(given, expected):
    assert validate.mail_localpart(given) == expected


@pytest.mark.parametrize("value", ["", "x" * 65, "a+b", "a b", "a@b", ".a", "a.", "a..b",
                                   "ünï", "a\n"])
def test_mail_localpart_rejects(value):
    with pytest.raises(UsageError, match="mailbox name"):
        validate.mail_localpart(value)


# ---------------------------------------------------------------- vanity labels


@pytest.mark.parametrize("given, expected", [("shop", "shop"), ("My-Shop2", "my-shop2"),
                                              ("a", "a"), ("x" * 63, "x" * 63),
                                              ("xn--mnchen-3ya", "xn--mnchen-3ya")])
def test_vanity_label_accepts(given, expected):
    assert validate.vanity_label(given, ()) == expected


@pytest.mark.parametrize("value", ["", "-shop", "shop-", "sh_op", "sh.op", "x" * 64, "shöp",
                                   "sh op"])
def test_vanity_label_rejects_format(value):
    with pytest.raises(UsageError, match="invalid name"):
        validate.vanity_label(value, ())


@pytest.mark.parametrize("value", ["www", "mail", "admin", "ns1", "ns8", "WebMail", "mta-sts",
                                   "autodiscover", "postmaster"])
def test_vanity_label_builtin_reserved(value):
    with pytest.raises(UsageError, match="is reserved"):
        validate.vanity_label(value, ())


def test_vanity_label_group_reserved():
    with pytest.raises(UsageError, match="'billing' is reserved"):
        validate.vanity_label("billing", ("Billing", "status"))
    assert validate.vanity_label("shop", ("billing",)) == "shop"


def test_builtin_reserved_list():
    assert {"www", "mail", "_dmarc", "_smtp._tls", "ns1", "ns8"} <= set(validate.BUILTIN_RESERVED)


# ---------------------------------------------------------------- passwords


@pytest.mark.parametrize("value", ["Abcdefg1", "Correct-Horse-9", "Ab1" + "x" * 253])
def test_password_accepts(value):
    assert validate.password(value) == value


@pytest.mark.parametrize("value, words", [
    ("Abc1", "at least 8"),
    ("abcdefg1", "uppercase"),
    ("ABCDEFG1", "lowercase"),
    ("Abcdefgh", "digit"),
    ("Abcdefg1\nsecond", "line break"),
    ("Abcdefg1\r", "line break"),
    ("Abcdefg1\0", "NUL"),
    ("Ab1" + "x" * 254, "at most 256"),
    ("ÄÖÜäöüß1", "uppercase"),  # the web UI's classes are ASCII
])
def test_password_rejects_without_echoing_it(value, words):
    with pytest.raises(UsageError) as info:
        validate.password(value)
    assert words in str(info.value)
    assert value not in str(info.value)


def test_generate_password_satisfies_the_rule_and_varies():
    seen = set()
    for _ in range(200):
        pw = validate.generate_password()
        assert len(pw) == 20 and re.fullmatch(r"[A-Za-z0-9]{20}", pw)
        assert validate.password(pw) == pw
        seen.add(pw)
    assert len(seen) == 200


def test_random_characters_are_uniform_without_modulo_bias():
    """100 symbols do not divide 256: a plain `byte % 100` would make the first 56 symbols 1.5x
    as likely (~2,340 vs ~1,560 of 200,000). Unbiased, each lands near 2,000 (sd ~44)."""
    alphabet = "".join(chr(0x100 + i) for i in range(100))
    counts = Counter(validate._random_string(alphabet, 200_000))
    assert set(counts) == set(alphabet)
    assert all(1_700 < n < 2_300 for n in counts.values()), sorted(counts.values())[::10]
