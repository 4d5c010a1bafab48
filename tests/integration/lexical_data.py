"""A labeled set where word identity decides the label: returns routed to the warehouse that
stocks the product, named only by a made-up product code.

Every sentence says the same kind of thing (a return, a fault, a question) around a code,
and the codes are permutations of the same four digits (sku3817, sku8173, ...), assigned to
warehouses at random: a sentence encoder's subword pieces of them overlap across
warehouses, so a head on its vectors guesses (measured: 0.6-0.76 accuracy with a logistic
regression on MiniLM vectors), while a model of the words themselves reads each code as one
token. Held-out sentences use templates never trained on, with the same codes.
"""
from __future__ import annotations

import itertools
import random

LABELS = ["north", "south", "east"]

TRAIN_TEMPLATES = [
    "My {c} arrived broken, I want to send it back.",
    "How do I return the {c} I ordered last week?",
    "The {c} stopped working after two days.",
    "I received a {c} with a missing part.",
    "Please exchange my {c} for a new one.",
    "Is the {c} covered by the warranty?",
    "The box of the {c} was empty.",
    "Can I get a refund for the {c}?",
]
HELD_OUT_TEMPLATES = [
    "Where should I ship the faulty {c}?",
    "The {c} came with scratches on the side.",
    "I would like to return one {c} please.",
]


def codes() -> dict[str, str]:
    """36 product codes and the warehouse of each (12 per warehouse), fixed by a seed."""
    digits = ["".join(p) for p in itertools.permutations("3817")] + ["".join(p) for p in itertools.permutations("5926")]
    random.Random(0).shuffle(digits)
    return {f"sku{d}": LABELS[i % 3] for i, d in enumerate(digits[:36])}


def code_split() -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
    """(training examples: 8 templates x 36 codes, held-out (text, label): 3 unseen
    templates x the same codes)."""
    table = codes()
    train = [{"text": t.format(c=c), "label": label} for c, label in table.items() for t in TRAIN_TEMPLATES]
    held_out = [(t.format(c=c), label) for c, label in table.items() for t in HELD_OUT_TEMPLATES]
    return train, held_out
