"""The data report's parts without services: trained tokens equal training's own labels
under several chat template families, each detector on a table of hits and misses, duplicate
and leakage matching, the estimate's arithmetic."""

from __future__ import annotations

import doctest
import json
from pathlib import Path
from typing import Any

import pytest

from service.files.report import build, detectors, duplicates, estimate, summary, tokens
from service.files.report.detectors import iban_valid, luhn_valid, scan
from service.files.report.duplicates import Index, LeakCheck, normalized
from service.files.report.estimate import Run
from service.files.report.tokens import row_tokens
from service.jobs.token_count import ChatTokenCounter
from service.reports import service
from tests.support.chat_templates import FAMILIES, build_chat_tokenizer
from tests.training.test_chat_template_families import CONVERSATIONS
from training.chat_template import tokenize_chat


@pytest.mark.parametrize("module", [build, detectors, duplicates, estimate, service, summary,
                                    tokens])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


# ---- trained tokens: the service's count is training's labels != -100


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory,
             tiny_model_dir: Path) -> dict[str, tuple[Any, ChatTokenCounter]]:
    """Each family's Hugging Face tokenizer (what training uses) and the service's counter
    on the same saved folder; the tiny test model's ChatML tokenizer among them."""
    from transformers import AutoTokenizer

    out = {"tiny (chatml)": (AutoTokenizer.from_pretrained(tiny_model_dir),
                             ChatTokenCounter(tiny_model_dir))}
    for name, family in FAMILIES.items():
        folder = Path(tmp_path_factory.mktemp(name))
        out[name] = (build_chat_tokenizer(family, folder), ChatTokenCounter(folder))
    return out


FAMILY_NAMES = ["tiny (chatml)", *FAMILIES]


# The tiny model's plain ChatML template writes no tool calls: its cases are the others.
CASES = [(family, case) for family in FAMILY_NAMES for case in CONVERSATIONS
         if family != "tiny (chatml)" or "tool" not in case]


@pytest.mark.parametrize("limit", [4096, 24])
@pytest.mark.parametrize(("family", "case"), CASES)
def test_trained_tokens_equal_trainings_labels(families, family, case, limit):
    hf, counter = families[family]
    messages, tools = CONVERSATIONS[case]
    labels = tokenize_chat(hf, messages, limit, tools=tools)
    ours = row_tokens(counter, {"messages": messages, "tools": tools}, limit)
    assert ours.trained == labels.num_trained_tokens
    assert ours.total == labels.num_tokens
    assert ours.trained > 0 or limit < 100


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_the_preview_is_the_rendering_cut_where_loss_starts_and_stops(families, family):
    hf, counter = families[family]
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    row = row_tokens(counter, {"messages": messages}, 4096, with_segments=True)
    rendered = counter.render(messages)
    assert "".join(s.text for s in row.segments) == rendered
    trained = "".join(s.text for s in row.segments if s.trained)
    labels = tokenize_chat(hf, messages, 4096)
    assert trained.strip() == hf.decode(
        [t for t in labels.labels if t != -100]).strip()
    assert "Hello!" in trained and "Hi" not in trained


def test_weight_0_turns_are_untrained_in_the_count(families):
    _, counter = families["tiny (chatml)"]
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello there!"}]
    trained = row_tokens(counter, {"messages": messages}, 4096)
    weighted = row_tokens(counter, {"messages": [messages[0], {**messages[1], "weight": 0}]},
                          4096)
    assert weighted.trained == 0 and weighted.untrained == trained.total


# ---- detectors: each kind, its look-alikes not reported

HITS = [
    ("write to jane.doe@example.com", "email", "j***@example.com"),
    ("call +44 20 7946 0958 today", "phone", "+**********58"),
    ("call (415) 555-2671", "phone", "********71"),
    ("card 4111 1111 1111 1111", "card", "************1111"),
    ("card 5500-0000-0000-0004", "card", "************0004"),
    ("iban GB82 WEST 1234 5698 7654 32", "iban", "GB82****************32"),
    ("iban DE89370400440532013000", "iban", "DE89****************00"),
    ("server at 192.168.10.77", "ip_address", "192.168.*.*"),
    ("v6 2001:db8::8a2e:370:7334 here", "ip_address", "2001:0db8:*:*:*:*:*:*"),
    ("key sk-proj-abcdefghijklmnopqrstuvwxyz123456", "api_key",
     "sk-proj-" + "*" * 30 + "56"),
    ("AWS AKIAIOSFODNN7EXAMPLE", "api_key", "AKIA**************LE"),
    ("token ghp_" + "a1B2" * 9, "api_key", "ghp_" + "*" * 34 + "B2"),
    ("slack xoxb-123456789012-abcdefABCDEF", "api_key", "xoxb-" + "*" * 23 + "EF"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow...\n-----END RSA PRIVATE KEY-----",
     "private_key", "-----BEGIN RSA PRIVATE KEY-----***"),
    ("-----BEGIN PRIVATE KEY-----\nMIIE", "private_key", "-----BEGIN PRIVATE KEY-----***"),
]

MISSES = [
    "order 4111 1111 1111 1112 shipped",  # 16 digits failing Luhn
    "id 1234567812345678",  # another 16-digit number failing Luhn
    "iban GB82 WEST 1234 5698 7654 33",  # mod 97 fails
    "version 1.2.3 and 999.1.1.1",  # not an IPv4 address
    "std::vector<int> and 12:30:45",  # colons that are no IPv6 address
    "sk-short and AKIA123",  # prefixes without a key's length
    "-----BEGIN PUBLIC KEY-----",
    "the year 2024 and the number 42",
    "name@localhost",
]


@pytest.mark.parametrize(("text", "kind", "excerpt"), HITS)
def test_each_detector_finds_its_kind_masked(text, kind, excerpt):
    found = [(f.kind, f.excerpt) for f in scan(text)]
    assert (kind, excerpt) in found
    secret = text.split(" ", 1)[-1] if kind != "private_key" else "MIIE"
    assert all(secret not in e for _, e in found)


@pytest.mark.parametrize("text", MISSES)
def test_look_alikes_are_not_reported(text):
    assert scan(text) == []


@pytest.mark.parametrize(("digits", "valid"), [
    ("4111111111111111", True), ("4111111111111112", False), ("79927398713", True),
    ("79927398710", False), ("378282246310005", True)])
def test_luhn(digits, valid):
    assert luhn_valid(digits) is valid


@pytest.mark.parametrize(("iban", "valid"), [
    ("GB82WEST12345698765432", True), ("DE89 3704 0044 0532 0130 00", True),
    ("FR1420041010050500013M02606", True), ("GB82WEST12345698765431", False),
    ("XX00", False)])
def test_iban(iban, valid):
    assert iban_valid(iban) is valid


# ---- duplicates and leakage


def chat(question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


LONG = ("Explain in a few sentences why the sky looks blue on a clear day and why sunsets "
        "look red, for a curious ten year old who likes science")


def test_exact_duplicates_ignore_whitespace_and_near_ones_need_most_words_shared():
    index = Index()
    rows = {1: chat("Hi", "Hello"), 2: chat(LONG, "Rayleigh scattering."),
            3: chat(" Hi ", "Hello"), 4: chat(LONG + " please", "Rayleigh scattering."),
            5: chat("Something else entirely", "Yes")}
    for line, row in rows.items():
        index.add(line, normalized(row))
    assert index.exact_groups() == [[1, 3]]
    assert [(a, b) for a, b, _ in index.near] == [(2, 4)]
    assert 0.8 <= index.near[0][2] < 1


def test_validation_rows_leak_exactly_or_nearly():
    index = Index()
    for line, row in enumerate([chat("Hi", "Hello"), chat(LONG, "Rayleigh scattering.")], 1):
        index.add(line, normalized(row))
    check = LeakCheck(index)
    rows = [(1, normalized(chat("Hi", "Hello"))),
            (2, normalized(chat(LONG + " please", "Rayleigh scattering."))),
            (3, normalized(chat("New", "Row")))]
    found = [leak for leak in (check(line, text) for line, text in rows) if leak is not None]
    assert [(x.line, x.training_lines, x.kind) for x in found] == [
        (1, [1], "exact"), (2, [2], "near")]


# ---- estimate


def test_estimate_from_measured_runs():
    runs = [Run(tokens=8000, seconds=10.0, workers=2, gpus=0),
            Run(tokens=4000, seconds=20.0, workers=1, gpus=0)]
    e = estimate.estimate(runs, tokens_per_epoch=1000, epochs=4)
    assert (e.basis, e.jobs_measured, e.tokens_per_second, e.tokens) == (
        "measured", 2, 400.0, 4000)
    assert (e.seconds, e.gpus, e.gpu_hours, e.worker_hours) == (10.0, 0, 0.0, 0.0056)


def test_no_earlier_run_is_no_estimate():
    e = estimate.estimate([], tokens_per_epoch=1000, epochs=3)
    assert e.basis == "none" and e.seconds is None and e.tokens == 3000


def test_a_bad_line_is_named(families):
    from contract.chat_format import InvalidChatFile
    from contract.lines import split_lines

    _, counter = families["tiny (chatml)"]
    good = json.dumps(chat("Hi", "Hello")).encode()
    data = b"\n".join([good] * 3 + [b'{"messages": ['] + [good] * 8)
    with pytest.raises(InvalidChatFile) as e:
        build.scan_file(split_lines([data], 1 << 20), lambda: counter, method="supervised",
                        max_seq_length=64, base="tiny")
    assert e.value.line == 4
