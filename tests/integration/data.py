"""A small labeled set made for the tests: support tickets routed to three teams.

The labels are team codes, as a help desk would use them; their names tell a sentence
encoder nothing, so the zero-shot adapter is near chance and a fine-tuned head must show
what a few examples teach.
"""
from __future__ import annotations

TICKETS = {
    "team-1": [  # billing
        "I was charged twice for my subscription this month.",
        "Please refund the payment I made by mistake.",
        "My invoice shows the wrong amount.",
        "Why did my credit card get billed again?",
        "I need a receipt for my last payment.",
        "The discount code was not applied to my bill.",
        "Cancel my plan and return the money.",
        "There is an unknown charge on my statement.",
        "Can I pay the invoice by bank transfer?",
        "You billed me after I cancelled.",
        "The price on my bill is higher than advertised.",
        "I want my money back for the annual plan.",
        "My payment failed but the card is valid.",
        "How do I update the card used for billing?",
    ],
    "team-2": [  # delivery
        "My parcel has not arrived after two weeks.",
        "The tracking number does not work.",
        "The box was damaged when the courier delivered it.",
        "Can I change the delivery address for my order?",
        "The package was left at the wrong house.",
        "When will my order be shipped?",
        "The courier never showed up today.",
        "Only half of my items were in the package.",
        "Delivery is late and nobody answers the phone.",
        "I need express shipping to Canada.",
        "My order says delivered but I never got it.",
        "The driver lost my parcel.",
        "How long does shipping take to Spain?",
        "The shipment is stuck at customs.",
    ],
    "team-3": [  # technical
        "The app crashes every time I open settings.",
        "I cannot log in, the password reset email never comes.",
        "The website shows an error 500 on checkout.",
        "Two-factor authentication codes are rejected.",
        "The sync between my phone and laptop stopped working.",
        "The export button does nothing in Firefox.",
        "My account got locked after an update.",
        "The API returns a timeout for every request.",
        "Notifications stopped working on Android.",
        "The page is blank after I sign in.",
        "Uploads fail with a network error.",
        "The search feature returns no results at all.",
        "The desktop client freezes on startup.",
        "I get logged out every few minutes.",
    ],
}


def split() -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
    """Training examples (10 per team) and held-out (text, label) pairs (4 per team)."""
    train = [{"text": t, "label": label} for label, texts in TICKETS.items() for t in texts[:10]]
    held_out = [(t, label) for label, texts in TICKETS.items() for t in texts[10:]]
    return train, held_out


# A task a head on frozen vectors cannot learn and deeper adaptation can: the label is the
# XOR of two things a sentence encoder represents well (topic: food or a device; sentiment),
# so a linear head on their (nearly additive) vectors stays near chance, while LoRA on the
# top layers can learn the interaction. Held-out subjects are never trained on.
FOOD = ["the soup", "the pizza", "the coffee", "the cake", "the meal", "the salad", "the burger", "the pasta",
        "the bread", "the curry", "the sushi", "the tea"]
DEVICES = ["the laptop", "the phone", "the app", "the printer", "the router", "the camera", "the monitor",
           "the keyboard", "the tablet", "the charger", "the speaker", "the watch"]
PRAISE = ["was wonderful", "was excellent", "worked perfectly", "was a delight", "exceeded my hopes"]
BLAME = ["was awful", "was terrible", "broke down", "was a disaster", "let me down"]


def xor_split() -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
    """(training examples: 8 subjects of each topic, held-out (text, label): 4 of each)."""
    def make(food: list[str], devices: list[str]) -> list[tuple[str, str]]:
        rows = []
        for subject in food:
            rows += [(f"{subject} {p}", "a") for p in PRAISE] + [(f"{subject} {b}", "b") for b in BLAME]
        for subject in devices:
            rows += [(f"{subject} {p}", "b") for p in PRAISE] + [(f"{subject} {b}", "a") for b in BLAME]
        return rows

    train = [{"text": t, "label": label} for t, label in make(FOOD[:8], DEVICES[:8])]
    return train, make(FOOD[8:], DEVICES[8:])
