"""Cross-document boilerplate removal across shards, and PII scrubbing that leaves numbers which are not personal
data alone."""

from __future__ import annotations

import json

from data_pipeline.cli import main
from data_pipeline.document import Document
from data_pipeline.shards import read_records
from data_pipeline.steps import build_step
from data_pipeline.synthetic import generate_clean_documents

BANNER = (
    "Subscribe to our newsletter to receive the latest articles, offers and event invitations every week, "
    "straight to your inbox."
)
RARE = "This paragraph is quoted by exactly two documents in the whole corpus and is not boilerplate at all."


def test_boilerplate_in_200_documents_goes_and_a_paragraph_in_2_stays(tmp_path):
    texts = generate_clean_documents(300, seed=5)
    rows = []
    for i, text in enumerate(texts):
        paragraphs = text.split("\n\n")
        if i < 200:  # the banner in 200 documents, at varying places and with a changed year/case in some
            banner = BANNER.upper() if i % 7 == 0 else BANNER
            paragraphs.insert(i % (len(paragraphs) + 1), banner)
        if i in (250, 251):
            paragraphs.append(RARE)
        rows.append({"id": f"doc{i:04d}", "text": "\n\n".join(paragraphs)})
    rows.append({"id": "only-banner", "text": BANNER})
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert main(["boilerplate_dedup", f"input={source}", f"output={out}", "tasks=3", "workers=1"]) == 0
    kept = {
        json.loads(line)["id"]: json.loads(line)["text"]
        for p in sorted((out / "boilerplate_dedup").glob("*.jsonl"))
        for line in p.read_text().splitlines()
    }
    assert not any(BANNER.lower() in text.lower() for text in kept.values())
    assert [doc_id for doc_id, text in kept.items() if RARE in text] == ["doc0250", "doc0251"]
    original = {r["id"]: r["text"] for r in rows}
    for i in range(200, 300):  # documents without the banner are untouched
        assert kept[f"doc{i:04d}"] == original[f"doc{i:04d}"]
    assert kept["doc0003"] == texts[3]  # the banner's removal restores the document exactly
    stats = json.loads((out / "stats" / "boilerplate_dedup.json").read_text())
    assert stats["counters"]["boilerplate.spans_removed"] == 201
    assert stats["counters"]["boilerplate.documents_changed"] == 200
    assert stats["counters"]["excluded.boilerplate_dedup:boilerplate_only"] == 1
    excluded = next(read_records(out / "excluded" / "boilerplate_dedup" / "shard-00000.jsonl.zst"))
    assert excluded["id"] == "only-banner" and excluded["excluded_value"] == 1.0
    assert "boilerplate.spans_removed 201" in (out / "report.md").read_text()


def test_boilerplate_lines_for_web_text():
    step = build_step("boilerplate_dedup", {"unit": "line", "max_documents": 2})
    body = generate_clean_documents(4, seed=2)
    docs = [
        Document(f"d{i}", "Skip to main content of this page right now\n" + b.replace("\n\n", "\n"))
        for i, b in enumerate(body)
    ]
    out = step(docs)
    assert [d.text for d in out] == [b.replace("\n\n", "\n") for b in body]


PLANTED = {
    "email": ["jane.doe@example.org", "bob+list@mail.co.uk", "first.last@sub.university.edu"],
    "ip": ["8.8.8.8", "93.184.216.34", "2001:4860:4860::8888", "2606:4700:4700::1111"],
    "phone": ["+1 415-555-0132", "(212) 555-0199", "+44 20 7946 0958", "+49 30 901820"],
}
NOT_PII = [
    "3.11.2",
    "1.2.3.4.5",
    "2024-01-15",
    "15/01/2024",
    "3.14159265",
    "1,234,567",
    "v2.0.1",
    "12:30:45",
    "127.0.0.1",
    "192.168.1.20",
    "ISBN 978-3-16-148410-0",
    "std::vector",
    "0.5",
    "10.0.0.1",
    "99.9%",
]


def test_pii_replaced_and_counted_numbers_that_are_not_pii_left_alone():
    step = build_step("pii")
    sentences = [
        f"Reach the team at {PLANTED['email'][0]} or {PLANTED['email'][1]}; "
        f"the archive is kept by {PLANTED['email'][2]}.",
        f"Our resolvers answer on {PLANTED['ip'][0]}, {PLANTED['ip'][1]}, {PLANTED['ip'][2]} and {PLANTED['ip'][3]}.",
        f"Call {PLANTED['phone'][0]}, {PLANTED['phone'][1]}, {PLANTED['phone'][2]} or {PLANTED['phone'][3]} "
        "during office hours.",
        "Python " + NOT_PII[0] + " came out; see " + ", ".join(NOT_PII[1:]) + " for the rest.",
    ]
    text = "\n".join(sentences)
    out = step([Document("a", text, {"url": "x"}), Document("b", "Nothing personal here, version 3.11.2.")])
    scrubbed = out[0].text
    for values in PLANTED.values():
        for value in values:
            assert value not in scrubbed, value
    assert (
        scrubbed.count("<EMAIL>") == 3 and scrubbed.count("<IP_ADDRESS>") == 4 and scrubbed.count("<PHONE_NUMBER>") == 4
    )
    for value in NOT_PII:
        assert value in scrubbed, value
    assert out[1].text == "Nothing personal here, version 3.11.2."
    counters = step.context.counters
    assert (counters["pii.email"], counters["pii.ip"], counters["pii.phone"], counters["pii.documents"]) == (3, 4, 4, 1)
    private = build_step("pii", {"only_public_ips": False, "email_placeholder": "email@example.com"})
    assert private.scrub("ping 192.168.1.20 or mail a@b.io")[0] == "ping <IP_ADDRESS> or mail email@example.com"


def test_symbols_kept_spelled_out_or_removed():
    text = "Great work \U0001f44d\U0001f3fd on the release \u2605 \U0001f389"
    assert build_step("normalize")([Document("a", text)])[0].text == text
    words = build_step("normalize", {"symbols": "words"})([Document("a", text)])[0].text
    assert words == "Great work thumbs up medium skin tone on the release black star party popper"
    assert build_step("normalize", {"symbols": "remove"})([Document("a", text)])[0].text == "Great work on the release"
