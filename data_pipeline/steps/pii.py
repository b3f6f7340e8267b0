"""Replace personal data in text by placeholders: e-mail addresses, IP addresses (v4 and v6) and phone numbers.

As FineWeb (datatrove's PIIFormatter), only public IP addresses are replaced by default: 127.0.0.1, 10.x and
documentation ranges are not personal data. Candidates are found by regex and then validated: IP addresses by
the standard library's `ipaddress`, phone numbers by `phonenumbers` (Google's libphonenumber rules), so version
numbers (3.11.2), dates (2024-01-15), decimals (3.14159) and ISBNs stay as they are. The step keeps every
document; counters `pii.email`, `pii.ip`, `pii.phone` and `pii.documents` say how much it replaced.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Iterator, Sequence

from data_pipeline.document import Document
from data_pipeline.steps.base import Step

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![\w-])"
)
# Dotted quads not inside a longer dotted number (1.2.3.4.5), and colon-hex groups that could be IPv6.
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")
# Seven or more digits with phone separators: the only stretches worth handing to libphonenumber.
_PHONE_CANDIDATE = re.compile(r"(?<![\w.])\+?\(?\d[\d\s().\-/]{5,}\d(?![\w])")
_DIGIT = re.compile(r"\d")
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_IPV6_HINT = re.compile(r"[0-9A-Fa-f]:[0-9A-Fa-f:]*:")  # cheap test before the IPv6 regex


class Pii(Step):
    name = "pii"

    def __init__(
        self,
        emails: bool = True,
        ip_addresses: bool = True,
        phone_numbers: bool = True,
        only_public_ips: bool = True,
        phone_regions: Sequence[str] = ("US",),
        email_placeholder: str = "<EMAIL>",
        ip_placeholder: str = "<IP_ADDRESS>",
        phone_placeholder: str = "<PHONE_NUMBER>",
    ) -> None:
        super().__init__()
        self.emails = emails
        self.ip_addresses = ip_addresses
        self.phone_numbers = phone_numbers
        self.only_public_ips = only_public_ips
        self.phone_regions = [str(r).upper() for r in phone_regions]
        if phone_numbers:
            import phonenumbers

            unknown = [r for r in self.phone_regions if r not in phonenumbers.SUPPORTED_REGIONS]
            if unknown or not self.phone_regions:
                raise ValueError(f"pii.phone_regions={list(phone_regions)}: use region codes such as US, GB, DE")
        self.email_placeholder = email_placeholder
        self.ip_placeholder = ip_placeholder
        self.phone_placeholder = phone_placeholder

    def enabled(self) -> bool:
        return self.emails or self.ip_addresses or self.phone_numbers

    def _is_personal_ip(self, candidate: str) -> bool:
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            return False
        if address.version == 6 and sum(1 for group in candidate.split(":") if group) < 3:
            return False  # "a::b", "std::x": C++ scopes parse as IPv6 too
        if not self.only_public_ips:
            return True
        # Public: IPv6 must also be in the global unicast block (2000::/3), which `is_global` does not require.
        return address.is_global and (address.version == 4 or address in _GLOBAL_UNICAST)

    def _phone_spans(self, text: str) -> list[tuple[int, int]]:
        import phonenumbers

        spans = []
        for candidate in _PHONE_CANDIDATE.finditer(text):
            if len(_DIGIT.findall(candidate.group())) < 7:
                continue
            for region in self.phone_regions:
                found = [
                    (candidate.start() + m.start, candidate.start() + m.end)
                    for m in phonenumbers.PhoneNumberMatcher(
                        candidate.group(), region, leniency=phonenumbers.Leniency.VALID
                    )
                ]
                if found:
                    spans.extend(found)
                    break
        return spans

    def scrub(self, text: str) -> tuple[str, dict[str, int]]:
        """The text with personal data replaced, and how many of each kind were replaced."""
        counts = {"email": 0, "ip": 0, "phone": 0}
        if self.emails and "@" in text:
            text, counts["email"] = _EMAIL.subn(self.email_placeholder, text)
        has_digit = _DIGIT.search(text) is not None
        if self.ip_addresses and has_digit and ("." in text or _IPV6_HINT.search(text)):

            def ip(match: re.Match) -> str:
                if self._is_personal_ip(match.group()):
                    counts["ip"] += 1
                    return self.ip_placeholder
                return match.group()

            text = _IPV4.sub(ip, text) if "." in text else text
            text = _IPV6.sub(ip, text) if _IPV6_HINT.search(text) else text
        if self.phone_numbers and has_digit:
            spans = self._phone_spans(text)
            for start, end in reversed(spans):
                text = text[:start] + self.phone_placeholder + text[end:]
            counts["phone"] = len(spans)
        return text, counts

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        for doc in documents:
            text, counts = self.scrub(doc.text)
            if text != doc.text:
                self.context.count("pii.documents")
                for kind, n in counts.items():
                    if n:
                        self.context.count(f"pii.{kind}", n)
                doc = Document(doc.id, text, doc.metadata)
            yield doc
