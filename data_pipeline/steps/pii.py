"""Replace personal data in text by placeholders: e-mail addresses, IP addresses (v4 and v6) and phone numbers.

As FineWeb (datatrove's PIIFormatter), only public IP addresses are replaced by default: 127.0.0.1, 10.x and
documentation ranges are not personal data. Unlike a bare regex, each candidate is checked on its format and its
context (data_pipeline/steps/pii_detect.py says exactly what is matched and what is left alone), because most
strings shaped like personal data in real text are not: section and version numbers (6.1.2.3, 3.11.2), dates and
timestamps (2023-02-04 11:59:01), decimals, ISBNs, systemd unit names (user@1000.service), package pins and
logins in commands stay as they are. The step keeps every document; counters `pii.email`, `pii.ip`, `pii.phone`
say how many of each kind it replaced, `pii.documents` in how many documents, and `pii.lookalike.<kind>` how many
candidates of each kind it left alone as look-alikes (the report prints both).
"""

from __future__ import annotations

from typing import Sequence

from data_pipeline.document import Document
from data_pipeline.steps.base import FilterStep, Verdict
from data_pipeline.steps.pii_detect import DIGIT, Found, find_emails, find_ips, find_phones

KINDS = ("email", "ip", "phone")


def _replace(text: str, found: list[Found], placeholder: str) -> str:
    for item in sorted((f for f in found if f.personal), key=lambda f: f.start, reverse=True):
        text = text[: item.start] + placeholder + text[item.end :]
    return text


class Pii(FilterStep):
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

    def find(self, text: str) -> tuple[str, list[Found]]:
        """The text with personal data replaced, and every candidate looked at (replaced or left alone)."""
        seen: list[Found] = []
        if self.emails and "@" in text:
            found = find_emails(text)
            text, seen = _replace(text, found, self.email_placeholder), seen + found
        has_digit = DIGIT.search(text) is not None
        if self.ip_addresses and has_digit:
            found = find_ips(text, self.only_public_ips)
            text, seen = _replace(text, found, self.ip_placeholder), seen + found
        if self.phone_numbers and has_digit:
            found = find_phones(text, self.phone_regions)
            text, seen = _replace(text, found, self.phone_placeholder), seen + found
        return text, seen

    def scrub(self, text: str) -> tuple[str, dict[str, int]]:
        """The text with personal data replaced, and how many of each kind were replaced."""
        text, seen = self.find(text)
        return text, {kind: sum(1 for f in seen if f.kind == kind and f.personal) for kind in KINDS}

    def filter(self, doc: Document) -> Verdict:
        """Rewrites the text; keeps every document."""
        text, seen = self.find(doc.text)
        for item in seen:
            # Private addresses are left alone by configuration, not as look-alikes.
            if item.personal:
                self.context.count(f"pii.{item.kind}")
            elif item.reason != "not_public":
                self.context.count(f"pii.lookalike.{item.kind}")
        if text != doc.text:
            self.context.count("pii.documents")
            doc.text = text
        return True
