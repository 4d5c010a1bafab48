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


# -- image examples -----------------------------------------------------------------------


def _zip(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def check_images(examples, **kw):
    from models.image import ImageLimits, open_image

    limits = ImageLimits(**kw)
    return check_examples(examples, kind="image", check=lambda b: open_image(b, limits),
                          max_examples=100, max_chars=50)


def test_image_examples_are_checked_and_stored_as_canonical_base64():
    import base64

    from tests.images import png

    images = [png(i) for i in range(4)]
    examples = [{"image": "data:image/png;base64," + base64.b64encode(b).decode(), "label": lab}
                for b, lab in zip(images, "xxyy")]
    clean = check_images(examples)
    assert [base64.b64decode(e["image"]) for e in clean] == images
    assert [e["label"] for e in clean] == list("xxyy")


@pytest.mark.parametrize(
    "bad,needle,error",
    [
        ({"image": "not base64!", "label": "y"}, "examples[3]: image is not valid base64", InvalidInput),
        ({"image": "aGVsbG8=", "label": "y"}, "examples[3]: not a PNG or JPEG", InvalidInput),
        ({"text": "a caption", "label": "y"}, "examples[3]: this backbone embeds images", InvalidInput),
        ({"image": "", "label": "y"}, "examples[3]: image must be", InvalidInput),
    ],
)
def test_bad_image_examples_say_where(bad, needle, error):
    import base64

    from tests.images import png

    good = [{"image": base64.b64encode(png(i)).decode(), "label": lab} for i, lab in enumerate("xxy")]
    with pytest.raises(error) as e:
        check_images([*good, bad])
    assert needle in e.value.message


def test_oversized_image_example_is_413():
    import base64

    from tests.images import png

    good = [{"image": base64.b64encode(png(i)).decode(), "label": lab} for i, lab in enumerate("xxyy")]
    with pytest.raises(PayloadTooLarge, match="examples\\[0\\]: the image decodes to 96 x 80 pixels"):
        check_images(good, max_pixels=1000)


def test_text_example_for_text_backbone_refuses_an_image():
    with pytest.raises(InvalidInput, match="embeds texts; send 'text', not 'image'"):
        check([*GOOD, {"image": "aGVsbG8=", "label": "x"}])


def test_zip_of_label_folders():
    from service.uploads import parse_zip
    from tests.images import jpeg, png

    data = _zip({"cat/1.png": png(1), "cat/2.PNG": png(2), "dog/a.jpg": jpeg(3), "dog/b.jpeg": jpeg(4),
                 "__MACOSX/cat/._1.png": b"junk", "README.txt": b"hello", "dog/.DS_Store": b"x"})
    examples = parse_zip(data, max_bytes=10**6)
    assert sorted((e["label"], e["_file"]) for e in examples) == [
        ("cat", "cat/1.png"), ("cat", "cat/2.PNG"), ("dog", "dog/a.jpg"), ("dog", "dog/b.jpeg")]
    assert len(check_images(examples)) == 4


@pytest.mark.parametrize(
    "data,needle,error",
    [
        (b"PK\x03\x04 not really", "not a zip file", InvalidInput),
        (_zip({"1.png": b"x"}), "1.png: put each image in a folder named after its label", InvalidInput),
        (_zip({"notes.txt": b"x"}), "no .png/.jpg/.jpeg images", InvalidInput),
        (_zip({"cat/1.png": bytes(2000)}), "unpacks to 2000 bytes; the limit is 1000", PayloadTooLarge),
    ],
)
def test_bad_zips_say_why(data, needle, error):
    from service.uploads import parse_zip

    with pytest.raises(error) as e:
        parse_zip(data, max_bytes=1000)
    assert needle in e.value.message


def test_broken_image_in_a_zip_names_the_member():
    from service.uploads import parse_zip
    from tests.images import png

    examples = parse_zip(_zip({"cat/1.png": png(1), "cat/2.png": png(2), "dog/3.png": png(3),
                               "dog/broken.png": png(4)[:10]}), max_bytes=10**6)
    with pytest.raises(InvalidInput, match="dog/broken.png: "):
        check_images(examples)


def test_image_examples_are_checked_by_header_only():
    """#14.16: the API reads headers; an image broken after its header passes here and is
    named by the worker when it decodes it (its `at` is kept for that)."""
    from service.uploads import parse_zip
    from tests.images import png

    examples = parse_zip(_zip({"cat/1.png": png(1), "cat/2.png": png(2), "dog/3.png": png(3),
                               "dog/broken.png": png(4)[:100]}), max_bytes=10**6)
    clean = check_images(examples)
    assert [e["at"] for e in clean] == ["cat/1.png", "cat/2.png", "dog/3.png", "dog/broken.png"]


def test_csv_field_past_the_csv_limit_is_413_with_its_line():
    data = ("text,label\nshort,a\n" + "x" * 200_000 + ",b\n").encode()
    with pytest.raises(PayloadTooLarge, match="line 3"):
        parse_csv(data)


def test_deeply_nested_jsonl_is_400_with_its_line():
    data = b'{"text": "ok", "label": "a"}\n' + b"[" * 200_000 + b"\n"
    with pytest.raises(InvalidInput, match="line 2: the JSON is nested too deeply"):
        parse_jsonl(data)
