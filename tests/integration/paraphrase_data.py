"""A labeled set where meaning decides the label and no word does: reviews that praise or
pan, each built around its own adjective (no adjective is used twice) in templates both
labels share. A model of the words (lexical) has nothing to learn from: every word that
tells the label is seen once; a sentence encoder knows "superb" and "splendid" mean alike.
"""
from __future__ import annotations

import random

LABELS = ["pan", "praise"]
PRAISE = ["wonderful", "superb", "terrific", "excellent", "marvelous", "delightful", "fantastic", "splendid",
          "brilliant", "lovely", "magnificent", "outstanding", "fabulous", "glorious", "exquisite", "charming",
          "amazing", "stellar", "sublime", "admirable", "pleasant", "enjoyable", "impressive", "exceptional"]
PAN = ["awful", "dreadful", "terrible", "horrible", "atrocious", "appalling", "abysmal", "dismal", "lousy",
       "miserable", "disgusting", "pathetic", "horrendous", "unpleasant", "shoddy", "disappointing", "tedious",
       "wretched", "vile", "nasty", "painful", "hideous", "boring", "dreary"]
TEMPLATES = ["The film was {a}.", "Honestly, the dinner tonight was {a}.", "My stay at that hotel was {a}.",
             "The concert last night was {a}.", "I thought the book was {a}.", "Their new album is {a}.",
             "The service at the shop was {a}.", "Overall the trip felt {a}."]


def paraphrase_examples() -> list[dict[str, str]]:
    """48 examples, 24 a label, each adjective once, templates assigned at random (seeded)."""
    rng = random.Random(0)
    rows = [{"text": rng.choice(TEMPLATES).format(a=a), "label": label}
            for label, words in (("praise", PRAISE), ("pan", PAN)) for a in words]
    rng.shuffle(rows)
    return rows
