"""Regenerate the bundled `person_json_pairs` preference datasets from `person_json`, deterministically.

    python scripts/make_person_json_pairs.py

Each record keeps person_json's instruction and sentence (dolly's instruction/context), with
`chosen` = the correct JSON and `rejected` = a plausible wrong answer, one of: the name and city
swapped, a wrong age, the right JSON wrapped in prose, a field missing, the age as a string.
The held-out pairs (`person_json_pairs_heldout`) come from person_json_heldout: people the
training pairs never show.
"""

import json
import random
from pathlib import Path

BUNDLED = Path(__file__).resolve().parent.parent / "src" / "kft" / "data" / "bundled"
PROSE = [
    ("Sure! Here is the JSON you asked for: ", ""),
    ("", " I hope this helps!"),
    ("The extracted information is ", "."),
    ("Here you go:\n", "\nLet me know if you need anything else."),
]
KINDS = ("swapped", "age", "prose", "missing", "age_text")


def dumps(value: dict) -> str:
    return json.dumps(value, ensure_ascii=False)


def wrong(answer: dict, kind: str, rng: random.Random) -> str:
    if kind == "swapped":
        return dumps({"name": answer["city"], "age": answer["age"], "city": answer["name"]})
    if kind == "age":
        shift = rng.choice([-1, 1]) * rng.randint(1, 9)
        return dumps({**answer, "age": max(1, answer["age"] + shift)})
    if kind == "prose":
        before, after = rng.choice(PROSE)
        return before + dumps(answer) + after
    if kind == "missing":
        dropped = rng.choice(["age", "city"])
        return dumps({k: v for k, v in answer.items() if k != dropped})
    return dumps({**answer, "age": str(answer["age"])})


def pairs(source: Path, target: Path, seed: int) -> int:
    rng = random.Random(seed)
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line]
    with open(target, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            answer = json.loads(row["response"])
            record = {
                "instruction": row["instruction"],
                "context": row["context"],
                "chosen": row["response"],
                "rejected": wrong(answer, KINDS[i % len(KINDS)], rng),
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(rows)


if __name__ == "__main__":
    for name, seed in (("person_json", 0), ("person_json_heldout", 1)):
        target = name.replace("person_json", "person_json_pairs")
        count = pairs(BUNDLED / f"{name}.jsonl", BUNDLED / f"{target}.jsonl", seed)
        print(f"{target}.jsonl: {count} pairs")
