"""Write data/sample_instructions.jsonl: the small instruction set that ships with the project.

Users have no data set at hand when they first try the suite, and the tests need records whose answers are
short and exactly checkable (a tiny model can memorize them). Every record is generated from the rules
below, so the file is reproducible: ``python scripts/make_sample_data.py``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "Canada": "Ottawa",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Chile": "Santiago",
    "Greece": "Athens",
    "Poland": "Warsaw",
    "India": "New Delhi",
    "Cuba": "Havana",
}
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "garden",
    "pencil",
    "window",
    "rocket",
    "forest",
    "candle",
    "silver",
    "planet",
    "bridge",
    "orange",
    "castle",
    "dragon",
    "meadow",
    "violin",
    "harbor",
    "lantern",
]
COLORS_FR = {"red": "rouge", "blue": "bleu", "green": "vert", "black": "noir", "white": "blanc", "yellow": "jaune"}


def generate(seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    records = []
    for country, city in CAPITALS.items():
        records.append(
            {
                "instruction": f"What is the capital of {country}?",
                "input": "",
                "output": f"The capital of {country} is {city}.",
            }
        )
    for word in WORDS:
        records.append({"instruction": "Reverse the letters of the word.", "input": word, "output": word[::-1]})
        records.append({"instruction": "Write the word in capital letters.", "input": word, "output": word.upper()})
        records.append(
            {
                "instruction": "How many letters does the word have?",
                "input": word,
                "output": f"The word {word} has {len(word)} letters.",
            }
        )
    for _ in range(60):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        records.append({"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b)})
    for english, french in COLORS_FR.items():
        records.append({"instruction": f"Translate the color '{english}' into French.", "input": "", "output": french})
    for _ in range(20):
        items = rng.sample(WORDS, 3)
        records.append(
            {
                "instruction": "Sort these words alphabetically.",
                "input": ", ".join(items),
                "output": ", ".join(sorted(items)),
            }
        )
    rng.shuffle(records)
    return records


if __name__ == "__main__":
    path = Path(__file__).resolve().parents[1] / "data" / "sample_instructions.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for record in generate():
            handle.write(json.dumps(record) + "\n")
    print(f"wrote {path}")
