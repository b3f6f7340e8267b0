"""Where the personal data of a text is: e-mail addresses, IP addresses and phone numbers that are what they claim.

A regex finds candidates; each is then checked on its format and on the words around it, because on real text
most strings shaped like personal data are not (on Debian's documentation 225 of 232 dotted quads were section
numbers, every phone-shaped match a timestamp, and `user@UID.service` a systemd unit). What is matched, and what
is left alone on purpose:

E-mail: `local@domain.tld` whose last label is a top-level domain of the public suffix list (the `tld` package,
  which trafilatura already installs). Left alone: systemd unit names (`user@1000.service`, `getty@tty1.target`),
  file names (`name@file.conf`, `logo@2x.png`, `archive@v2.zip`: .zip and .mov are TLDs too), package pins
  (`lodash@4.17.21`), a decorator in backquotes (no letter or digit before the @), hosts without a dot
  (`root@localhost`, `user@host`), and logins in commands: an address followed by `:path`
  (`git@github.com:org/repo.git`) or after ssh, scp, sftp, rsync, mosh or telnet.
IPv4: a dotted quad that `ipaddress` parses (public only by default). Left alone: a quad inside a longer dotted
  number (`1.2.3.4.5`) or right after a section or version word (`section 6.1.2.3`, `version 10.1.1.1`), a
  numbered heading (a line that starts `6.1.2.3 Title`), a quad whose first three parts also stand alone in the
  text (`6.1.2` and `6.1.2.3`: a numbering), a package version (`2:1.0.99.4-1`, `(>= 1.2.99.2)`), and a quad not
  shaped like an address (first part under 10, or fewer than two parts of 32 or more: `1.0.99.4`, `4.3.99.16`,
  `8.8.8.8`) unless a network word (IP, address, server, DNS, ping, gateway...) is within 60 characters on its
  line or a `:port` or `/prefix` follows. A quad whose parts are all below 32 (`6.1.2.3`, `8.8.8.8`) needs the
  network word within the 30 characters before it (`DNS server 8.8.8.8`, not `6.1.2.3, the DNS server`), and is
  a numbering when another such quad shares its first three parts (`6.1.2.3 and 6.1.2.4`).
IPv6: colon-hex groups that `ipaddress` parses, with at least three non-empty groups (`std::vector` is not an
  address), in the global unicast block 2000::/3 by default. MAC addresses and clock times do not parse.
Phone: a run of digits and phone separators on one line that libphonenumber (the `phonenumbers` package) finds
  valid for one of the configured regions. Left alone: anything holding a date (`2023-02-04`, `15/01/2024`), a
  number touching a clock time (`2023-02-04 11:59:01`), a part of a longer token (UUIDs, hex ids, `v2-1234567`),
  dotted numbers other than the 3.3.4 form (`6.1.2.3456789`), a number after a section, version, ISBN or id word,
  ISBN-13 shapes (978/979), and a bare run of digits (`2125550199`) with no phone word (phone, tel, call, fax,
  mobile...) before it, nor one pair of digit groups (`32768-65535`, a range, `555-0199`) or groups joined by
  single spaces (`571 612 1056`, a list; `415 555 0132`) without one. `+` or parentheses make it a phone number
  shape on its own (`+1 415-555-0132`, `(212) 555-0199`), as do three dashed or dotted groups (`212-555-0199`).

Not matched at all: obfuscated addresses (`jane at example dot org`), phone numbers written in the national format
of a region not in `phone_regions` (`020 7946 0958` with the default US; `+44 20 7946 0958` is matched), and IPs
outside the public ranges unless `only_public_ips` is false, nor a public address not shaped like one with no
network word near (`3.5.7.9` alone). Known misses the other way: a four-part version shaped like an address
(`Chrome 115.0.120.2`) or next to a network word (`server 1.0.99.4`) reads as an address.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Sequence

EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+([A-Za-z]{2,})(?![\w-])"
)
# Dotted quads not inside a longer dotted number (1.2.3.4.5), and colon-hex groups that could be IPv6.
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")
IPV6_HINT = re.compile(r"[0-9A-Fa-f]:[0-9A-Fa-f:]*:")  # cheap test before the IPv6 regex
# A run of digits and phone separators on one line, from its first to its last digit (greedy: no partial runs).
PHONE_RUN = re.compile(r"\+?\(?\d[\d().\-/ \t\u00a0]*\d")
DIGIT = re.compile(r"\d")

SYSTEMD_UNIT_TYPES = frozenset(
    "service socket target timer mount automount path slice scope device swap".split()
)  # `.target` is also a real TLD: a unit name is far likelier than an address there
FILE_EXTENSION_TLDS = frozenset({"zip", "mov"})  # real TLDs, but `archive@v2.zip` is a file
RETINA_IMAGE = re.compile(r"\d+(?:\.\d+)?x\.")  # logo@2x.png, icon@1.5x.webp
LOGIN_COMMAND = re.compile(r"\b(?:ssh|scp|sftp|rsync|mosh|telnet)\b[^\n]{0,80}$")
# The word right before a number that makes it a section, version or catalogue number, not an address.
NUMBERING_WORD = re.compile(
    r"(?:^|[^\w])(?:§|sections?|sect|sec|chapters?|chap|ch|clauses?|paragraphs?|para|articles?|art|parts?|"
    r"appendix|annex|tables?|figures?|fig|items?|steps?|rules?|versions?|ver|v|releases?|rev|revision|build|"
    r"patch|rfc|iso|isbn|issn|doi|id|serial|no|nr|level|exercise|theorem|lemma|equation|eq|listing|page|pp)"
    r"\.?[:=]?\s*(?:and\s+|or\s+|to\s+|-\s*)?$",
    re.IGNORECASE,
)
NETWORK_WORD = re.compile(
    r"\b(?:ip|ipv4|ip address|address(?:es)?|addr|servers?|hosts?|hostname|dns|resolvers?|nameservers?|gateway|"
    r"routers?|route|inet|subnet|netmask|proxy|firewall|ping|traceroute|ssh|connect\w*|listen\w*|bind|clients?|"
    r"peers?|interface|vpn|nat|dhcp|whois|origin)\b",
    re.IGNORECASE,
)
PHONE_WORD = re.compile(
    r"\b(?:phone|telephone|tel|call|fax|mobile|cell|contact|whatsapp|sms|hotline|dial|ring)\b|☎|📞",
    re.IGNORECASE,
)
DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}(?!\d)")
# Digits alone, one pair joined by - or /, or groups joined by single spaces: a phone number only with a phone word.
BARE_NUMBERS = re.compile(r"\d+(?:[-/]\d+)?|\d+(?: \d+)+")
DOTTED_PHONE = re.compile(r"(?:\+?\d{1,3}[ .])?\(?\d{3}\)?\.\d{3}\.\d{4}")
ISBN13 = re.compile(r"97[89][-\s]?\d")
# An address-shaped quad: first part 10 or more and at least two parts of 32 or more (93.184.216.34). Versions
# and section numbers rarely are (1.0.99.4, 4.3.99.16, 3.8.11.1, 6.1.2.3); others need a network word nearby.
BIG_PART = 32
# Package-version marks around a quad: a Debian epoch before it (2:1.0.99.4), a revision after it (1.0.99.4-1,
# ~rc1, +dfsg), a dependency relation before it (>= 1.2.99.2).
# A plain `=` is not one: `--dns=1.1.1.1`, `address=192.0.2.10` assign addresses.
VERSION_BEFORE = re.compile(r"(?:(?:^|[\s(])\d{1,2}:|(?:>=|<=|<<|>>|==|\(=)\s*)$")
VERSION_AFTER = re.compile(r"-\d{1,3}(?![\d.])|-\d+[a-z]|[~+][0-9a-zA-Z]")  # not a range: 192.0.2.1-192.0.2.9
CONTEXT_CHARS = 60
SMALL_QUAD_CONTEXT_CHARS = 30


@dataclass(frozen=True)
class Found:
    """One candidate: where it is, its kind, and whether it is personal data (`reason` says why not)."""

    start: int
    end: int
    kind: str  # email | ip | phone
    personal: bool
    reason: str = ""


def _before(text: str, start: int) -> str:
    line_start = text.rfind("\n", 0, start) + 1
    return text[max(line_start, start - CONTEXT_CHARS) : start]


def _around(text: str, start: int, end: int) -> str:
    """Up to CONTEXT_CHARS either side, within the line (a word on the next line is about something else)."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end
    return text[max(line_start, start - CONTEXT_CHARS) : min(line_end, end + CONTEXT_CHARS)]


def find_emails(text: str) -> list[Found]:
    from tld import is_tld

    found = []
    for m in EMAIL.finditer(text):
        suffix = m.group(1).lower()
        after = text[m.end() : m.end() + 2]
        local, _, domain = m.group().lower().rpartition("@")
        if not any(c.isalnum() for c in local):
            reason = "not_a_local_part"  # ``@typing.final``: a decorator in backquotes
        elif suffix in SYSTEMD_UNIT_TYPES:
            reason = "unit_name"
        elif suffix in FILE_EXTENSION_TLDS or RETINA_IMAGE.match(domain):
            reason = "file_name"
        elif not is_tld(suffix):
            reason = "not_a_domain"
        elif len(after) == 2 and after[0] == ":" and not after[1].isspace():
            reason = "login"  # scp/git remote: git@github.com:org/repo.git
        elif LOGIN_COMMAND.search(_before(text, m.start())):
            reason = "login"
        else:
            reason = ""
        found.append(Found(m.start(), m.end(), "email", not reason, reason))
    return found


def _dotted_numbers(text: str) -> set[str]:
    """Standalone dotted numbers of two or three parts: the prefixes a section numbering leaves in its text."""
    return set(re.findall(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){1,2}(?![\w]|\.\d)", text))


def _small_quads_by_prefix(text: str) -> dict[str, set[str]]:
    """Quads whose parts are all below BIG_PART, by their first three parts: 6.1.2.3 and 6.1.2.4 are a numbering."""
    out: dict[str, set[str]] = {}
    for quad in IPV4.findall(text):
        if all(int(part) < BIG_PART for part in quad.split(".")):
            out.setdefault(quad.rsplit(".", 1)[0], set()).add(quad)
    return out


def _ipv4_lookalike(text: str, m: re.Match, prefixes: set[str], small: dict[str, set[str]]) -> str:
    """Why the dotted quad at `m` is not an address ("" when it is one)."""
    candidate = m.group()
    before = _before(text, m.start())
    if NUMBERING_WORD.search(before):
        return "numbering_word"
    if not before.strip() and re.match(r"\.?[ \t]+[A-Z]", text[m.end() : m.end() + 3]):
        return "heading_number"
    if candidate.rsplit(".", 1)[0] in prefixes:
        return "numbering"
    after = text[m.end() : m.end() + 8]
    if not re.match(r":\d", after) and (VERSION_BEFORE.search(before) or VERSION_AFTER.match(after)):
        return "package_version"  # `80:162.222.181.197:80` is a port forward: a port after it says address
    parts = [int(part) for part in candidate.split(".")]
    suffix = re.match(r"[:/]\d", text[m.end() : m.end() + 2])
    if all(part < BIG_PART for part in parts):  # 6.1.2.3 or 8.8.8.8: only a network word right before decides
        if len(small.get(candidate.rsplit(".", 1)[0], ())) > 1:
            return "numbering"
        if not suffix and not NETWORK_WORD.search(before[-SMALL_QUAD_CONTEXT_CHARS:]):
            return "version_shaped_no_network_word"
    elif parts[0] < 10 or sum(part >= BIG_PART for part in parts) < 2:
        if not suffix and not NETWORK_WORD.search(_around(text, m.start(), m.end())):
            return "version_shaped_no_network_word"
    return ""


def _public(address, only_public: bool) -> bool:
    if not only_public:
        return True
    # IPv6 must also be in the global unicast block (2000::/3), which `is_global` does not require.
    return address.is_global and (address.version == 4 or address in ipaddress.ip_network("2000::/3"))


def find_ips(text: str, only_public: bool = True) -> list[Found]:
    found = []
    if "." in text:
        prefixes, small = None, {}
        for m in IPV4.finditer(text):
            try:
                address = ipaddress.ip_address(m.group())
            except ValueError:
                continue  # 999.1.2.3: not shaped like an address at all
            if prefixes is None:
                prefixes, small = _dotted_numbers(text), _small_quads_by_prefix(text)
            reason = _ipv4_lookalike(text, m, prefixes, small) or (
                "" if _public(address, only_public) else "not_public"
            )
            found.append(Found(m.start(), m.end(), "ip", not reason, reason))
    if IPV6_HINT.search(text):
        for m in IPV6.finditer(text):
            try:
                address = ipaddress.ip_address(m.group())
            except ValueError:
                continue
            if sum(1 for group in m.group().split(":") if group) < 3:
                continue  # "a::b", "std::x": C++ scopes parse as IPv6 too
            reason = "" if _public(address, only_public) else "not_public"
            found.append(Found(m.start(), m.end(), "ip", not reason, reason))
    return found


def _phone_lookalike(text: str, start: int, end: int) -> str:
    """Why text[start:end], which libphonenumber accepts, is not a phone number ("" when it is one)."""
    number = text[start:end]
    left, right = text[max(0, start - 2) : start], text[end : end + 2]
    if DATE.search(number):
        return "date"
    if re.fullmatch(r"\d:", left) or re.match(r":\d", right) or re.search(r"\d:\d", number):
        return "time"
    if (left[-1:] and (left[-1].isalnum() or left[-1] in "._-/#@\\")) or re.match(r"[.\-/_]?\w", right):
        return "part_of_token"
    if "." in number and not DOTTED_PHONE.fullmatch(number.strip()):
        return "dotted_number"
    if ISBN13.match(number):
        return "isbn"
    before = _before(text, start)
    if NUMBERING_WORD.search(before):
        return "numbering_word"
    if BARE_NUMBERS.fullmatch(number) and not PHONE_WORD.search(before):
        return "bare_numbers_no_phone_word"  # 2125550199, 32768-65535, 571 612 1056: ids, ranges, lists
    return ""


def _phone_lookalike_run(text: str, run: re.Match) -> bool:
    """A whole run that no phone number inside could survive `_phone_lookalike`: skipped before libphonenumber,
    which costs most of the step's time. Only cheap, certain cases: part of a longer token, or a bare number or
    range with no phone word before it."""
    before = text[run.start() - 1 : run.start()]
    if before and (before.isalnum() or before in "._-/#@\\"):
        return True
    if BARE_NUMBERS.fullmatch(run.group()):
        return not PHONE_WORD.search(_before(text, run.start()))
    return False


def find_phones(text: str, regions: Sequence[str]) -> list[Found]:
    import phonenumbers

    found = []
    for run in PHONE_RUN.finditer(text):
        if len(DIGIT.findall(run.group())) < 7 or _phone_lookalike_run(text, run):
            continue
        for region in regions:
            matches = list(phonenumbers.PhoneNumberMatcher(run.group(), region, leniency=phonenumbers.Leniency.VALID))
            if matches:
                for match in matches:
                    start, end = run.start() + match.start, run.start() + match.end
                    reason = _phone_lookalike(text, start, end)
                    found.append(Found(start, end, "phone", not reason, reason))
                break
    return found
