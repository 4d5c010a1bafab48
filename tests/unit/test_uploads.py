"""Fine-tune examples: JSONL/CSV parsing and validation name the line or index at fault."""
from __future__ import annotations

import pytest

from service.errors import InvalidInput, PayloadTooLarge
from service.uploads import check_examples, parse_csv, parse_jsonl

GOOD = [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}, {"text": "c", "label": "y"}, {"text": "d", "label": "y"}]


def check(examples, **kw):
    return check_examples(examples, max_examples=kw.get("max_examples", 100), max_chars=kw.get("max_chars", 50))


def test_good_examples_pass():
    assert check(GOOD) == GOOD


def test_jsonl_and_csv_round_trip():
    jsonl = b'{"text": "a", "label": "x"}\n\n{"text": "b", "label": "x"}\n'
    assert [e["text"] for e in parse_jsonl(jsonl)] == ["a", "b"]
    rows = parse_csv(b'text,label\n"hello, world",x\nbye,y\n')
    assert [(r["text"], r["label"]) for r in rows] == [("hello, world", "x"), ("bye", "y")]


@pytest.mark.parametrize(
    "examples,needle",
    [
        (GOOD[:2], "at least 2 classes"),
        (GOOD[:3], "at least 2 examples"),
        ([*GOOD, {"text": "", "label": "x"}], "examples[4]: text"),
        ([*GOOD, {"text": 5, "label": "x"}], "examples[4]: text"),
        ([*GOOD, {"text": "e", "label": ""}], "examples[4]: label"),
        ([*GOOD, {"text": "e", "label": ["x"]}], "examples[4]: label"),
        ([*GOOD, "just text"], "examples[4]: expected an object"),
    ],
)
def test_bad_examples_say_where(examples, needle):
    with pytest.raises(InvalidInput) as e:
        check(examples)
    assert needle in e.value.message


def test_limits():
    with pytest.raises(PayloadTooLarge, match="GRAFT_MAX_TRAIN_EXAMPLES"):
        check(GOOD, max_examples=3)
    with pytest.raises(PayloadTooLarge, match="examples\\[0\\]"):
        check([{"text": "x" * 51, "label": "x"}, *GOOD])


@pytest.mark.parametrize(
    "parse,data,needle",
    [
        (parse_jsonl, b'{"text": "a", "label": "x"}\n{broken\n', "line 2"),
        (parse_jsonl, b'["a", "x"]\n', "line 1"),
        (parse_jsonl, b"\xff\xfe", "UTF-8"),
        (parse_csv, b"sentence,label\na,x\n", "header"),
        (parse_csv, b"text,label\na,x\nb,x,extra\n", "line 3"),
    ],
)
def test_malformed_files_name_the_line(parse, data, needle):
    with pytest.raises(InvalidInput) as e:
        parse(data)
    assert needle in e.value.message


def test_file_lines_are_reported_by_line():
    examples = parse_jsonl(b'{"text": "a", "label": "x"}\n{"text": "", "label": "x"}\n')
    with pytest.raises(InvalidInput, match="line 2"):
        check(examples)
