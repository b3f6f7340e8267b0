"""PII precision and recall on planted text: look-alikes seen on real documentation (section and version numbers,
timestamps, dates, ISBNs, systemd unit names, logins in commands, hex ids, package pins) must stay byte for byte,
and real e-mail addresses, IP addresses and phone numbers in several formats must be replaced. Each value sits in
a sentence of the kind it comes from, since the step judges context as well as format. Precision and recall are
printed (pytest -s) and must both be 1.0 on this set."""

from __future__ import annotations

import json

from data_pipeline.document import Document
from data_pipeline.steps import build_step

PERSONAL = [
    ("email", "Write to {} with questions about the release.", "jane.doe@example.org"),
    ("email", "Maintainer: Sylvestre Ledru <{}>", "sylvestre@debian.org"),
    ("email", "Send patches to the list ({}) before Friday.", "dev-list+patches@lists.example.co.uk"),
    ("email", "contact: {}", "o.connor_77@mail.university.edu"),
    ("ip", "The DNS server at {} answered in 12 ms.", "8.8.8.8"),
    ("ip", "Connections from {} were refused by the firewall.", "93.184.216.34"),
    ("ip", "curl http://{}:8080/status", "203.0.114.7"),
    ("ip", "Our resolver listens on {} and on 127.0.0.1.", "2001:4860:4860::8888"),
    ("ip", "The attack came from {} at night.", "2606:4700:4700::1111"),
    ("ip", "ping {}", "1.1.1.1"),
    ("ip", "gcloud sql connect --mysql-hostname={} --mysql-port=3306", "35.188.150.50"),
    ("ip", "ssh -L 80:{}:80 example-instance", "162.222.181.197"),
    ("ip", "such as forward-addr: {}@853#dns.quad9.net", "9.9.9.9"),
    ("ip", "Failed password for root from {} port 22 ssh2", "45.33.32.156"),
    ("phone", "Call {} during office hours.", "+1 415-555-0132"),
    ("phone", "Phone: {}", "(212) 555-0199"),
    ("phone", "Our London office: {}.", "+44 20 7946 0958"),
    ("phone", "Berlin {} (reception)", "+49 30 901820"),
    ("phone", "Tel. {}", "212.555.0199"),
    ("phone", "Mobile: {}", "415 555 0132"),
    ("phone", "Reach the front desk at {} after 9am.", "212-555-0187"),
    ("phone", "For support call {} any time.", "2125550199"),
    ("phone", "Fax {}", "+33 1 42 68 53 00"),
]

LOOKALIKES = [
    "See section 6.1.2.3 for the details of the apt configuration.",
    "6.1.2.4 Configuring the network interface",
    "Clause 12.3.4.5 overrides clause 4.4.4.4 of the standard.",
    "As described in 6.1.2.3 and 6.1.2.4, the DNS server needs a static address on the interface.",
    "Read 5.2.1.7 first: it explains how the proxy server and its clients share the network.",
    "The chapters 1.2.3.1 to 1.2.3.9 describe the boot process; 1.2.3 is the overview.",
    "Versions after 1.11.1.1 no longer support Python 2; version 10.1.1.1 is the last.",
    "Python 3.11.2 fixed it, as did 1.2.3.4.5 of the other tool.",
    "Feb 04 11:59:01 host systemd[1]: Started Session 2 (2023-02-04 11:59:01 UTC).",
    "The log line reads 2023-02-04 11:59:01,123 INFO starting.",
    "Issued on 15/01/2024, valid until 2024-01-15.",
    "ISBN 978-3-16-148410-0 and ISBN 0-306-40615-2 are both in print.",
    "systemctl --user start user@1000.service after getty@tty1.service and user@UID.service.",
    "Enable dbus-org.freedesktop.resolve1@main.target on boot.",
    "scp backup.tar.gz admin@backup.example.com:/srv/ and ssh deploy@web01.example.com uptime",
    "git clone git@github.com:huggingface/datatrove.git",
    "npm install lodash@4.17.21 react@18.2.0; the ``@typing.final`` decorator.",
    '<img src="logo@2x.png" srcset="logo@1.5x.webp"> from archive@v2.zip',
    "The job id 3f2a9c1e-1234-5678-9abc-def012345678 and commit 4b825dc642cb6eb9a060e54bf8d69288fbee4904.",
    "Object 0x7f3a2b1c4d5e at offset 1234567890.",
    "Programs of 32768-65535 bytes are rejected; the range 1000000-2000000 is reserved.",
    "It took 12:30:45 on a 3.14159265 GHz core; 99.9% of 1,234,567 requests passed.",
    "Mount 192.168.1.20:/export and 10.0.0.1; std::vector<int> v; a::b::c();",
    "psutil.boot_time() returns 1365519115.0 and svmem(total=10367352832, used=8186245120).",
    "libxrandr (2:1.2.99.4-2) experimental; urgency=low. Bump to 1.0.99.4; build-dep (>= 1.2.99.2).",
    "Install with version=1.2.99.4 or pin xorg 1:7.7.0.1; see RFC 5280 section 4.2.1.2.",
    "IGNORED: failed tests: 571 612 1056; TESTDONE: 1214 tests out of 1215 reported OK.",
    "XFree86 4.3.99.16 Bring the tree up to date; at-spi2-core (2.39.90.1-1); Firefox 102.0.1.2 and 3.8.11.1.",
]


def test_pii_precision_and_recall_on_planted_look_alikes_and_real_values():
    step = build_step("pii")
    docs = [Document(f"p{i}", template.format(value)) for i, (_, template, value) in enumerate(PERSONAL)]
    docs += [Document(f"l{i}", text) for i, text in enumerate(LOOKALIKES)]
    out = {d.id: d.text for d in step(docs)}
    replaced = [value not in out[f"p{i}"] for i, (_, _, value) in enumerate(PERSONAL)]
    placeholders = {"email": "<EMAIL>", "ip": "<IP_ADDRESS>", "phone": "<PHONE_NUMBER>"}
    right_kind = [placeholders[kind] in out[f"p{i}"] for i, (kind, _, _) in enumerate(PERSONAL)]
    changed_lookalikes = [text for i, text in enumerate(LOOKALIKES) if out[f"l{i}"] != text]
    true_positives = sum(replaced)
    false_positives = sum(out[f"l{i}"].count("<") - text.count("<") for i, text in enumerate(LOOKALIKES))
    false_positives += sum(out[f"p{i}"].count("<") - t.format(v).count("<") - 1 for i, (_, t, v) in enumerate(PERSONAL))
    precision = true_positives / max(true_positives + false_positives, 1)
    recall = true_positives / len(PERSONAL)
    print(
        f"\nPII on planted text: precision {precision:.3f}, recall {recall:.3f} ({len(PERSONAL)} values, "
        f"{len(LOOKALIKES)} look-alike lines)"
    )
    assert changed_lookalikes == []
    assert all(replaced), [v for (_, _, v), r in zip(PERSONAL, replaced) if not r]
    assert all(right_kind)
    assert (precision, recall) == (1.0, 1.0)
    counters = step.context.counters
    assert [counters[f"pii.{kind}"] for kind in ("email", "ip", "phone")] == [4, 10, 9]
    assert counters["pii.lookalike.ip"] >= 8 and counters["pii.lookalike.email"] >= 5


def test_report_has_a_per_kind_pii_count(tmp_path):
    from data_pipeline.cli import main

    docs = [{"id": f"p{i}", "text": template.format(value)} for i, (_, template, value) in enumerate(PERSONAL)]
    docs += [{"id": f"l{i}", "text": text} for i, text in enumerate(LOOKALIKES)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert main(["pii", f"input={tmp_path / 'in.jsonl'}", f"output={tmp_path / 'out'}", "tasks=1"]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    line = next(line for line in report.splitlines() if line.startswith("- **pii**: e-mail"))
    counters = json.loads((tmp_path / "out" / "summary.json").read_text())["pii"]["counters"]
    expected = "; ".join(
        f"{label} {n} replaced, {counters[f'pii.lookalike.{kind}']} look-alikes kept"
        for (kind, label), n in zip(
            (("email", "e-mail addresses"), ("ip", "IP addresses"), ("phone", "phone numbers")), (4, 10, 9)
        )
    )
    assert line == f"- **pii**: {expected}; 23 documents changed"
