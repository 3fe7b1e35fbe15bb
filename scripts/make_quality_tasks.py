"""Regenerate the quality benchmark's tasks (benchmarks/quality_tasks/), deterministically.

    python scripts/make_quality_tasks.py

Four small tasks of different kinds, each a training file and a held-out file whose answers are
never trained on (held-out words, pairs or sentences), in Dolly's instruction/context/response
columns. The fourth, structured extraction, is the bundled `person_json` task.

- `topic`: classification. A sentence about sports, food, weather, music or travel -> that word.
  Held-out sentences use nouns the training set never shows.
- `korean`: an English/Korean transform. "a red cat" -> "빨간 고양이". Every word is trained,
  the held-out colour/noun pairs never are.
- `words`: open instruction following, scored by a check. "Write exactly N lowercase words about
  TOPIC, separated by commas." Any answer of N comma-separated lowercase words passes
  (benchmarks/quality.py checks it); held-out topics are new.
"""

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "benchmarks" / "quality_tasks"

TOPICS = {
    "sports": (
        ["goalkeeper", "referee", "marathon", "stadium", "tennis racket", "hockey stick"],
        ["striker", "swimming pool", "finish line"],
    ),
    "food": (
        ["noodle soup", "bakery", "recipe", "spicy curry", "chocolate cake", "grilled fish"],
        ["dumplings", "salad bowl", "kitchen knife"],
    ),
    "weather": (
        ["thunderstorm", "heat wave", "forecast", "snowfall", "strong wind", "humid air"],
        ["hailstorm", "drizzle", "foggy morning"],
    ),
    "music": (
        ["guitar solo", "choir", "concert hall", "violin", "drummer", "new album"],
        ["piano sonata", "jazz band", "melody"],
    ),
    "travel": (
        ["passport", "train station", "suitcase", "hotel room", "boarding pass", "tour guide"],
        ["airport lounge", "road trip", "luggage"],
    ),
}
TOPIC_SENTENCES = [
    "Everyone kept talking about the {noun} all afternoon.",
    "My neighbour sent me a photo of the {noun} yesterday.",
    "The article on page two was entirely about the {noun}.",
    "I could not stop thinking about that {noun}.",
    "She wrote a long post describing the {noun}.",
]
TOPIC_HELD_SENTENCES = [
    "Last week the {noun} was all anyone mentioned.",
    "Our teacher brought up the {noun} in class.",
]

COLOURS = {
    "red": "빨간",
    "blue": "파란",
    "yellow": "노란",
    "white": "하얀",
    "black": "검은",
    "green": "초록",
}
NOUNS = {
    "cat": "고양이",
    "dog": "강아지",
    "car": "자동차",
    "house": "집",
    "bird": "새",
    "flower": "꽃",
    "hat": "모자",
    "apple": "사과",
}

WORDS = {
    "the sea": ["wave", "salt", "tide", "shell", "boat", "fish", "sand", "blue"],
    "a city": ["street", "tower", "traffic", "crowd", "bus", "light", "noise", "bridge"],
    "winter": ["snow", "ice", "cold", "scarf", "frost", "fire", "dark", "boots"],
    "a forest": ["tree", "moss", "leaf", "deer", "path", "shade", "pine", "root"],
    "school": ["desk", "book", "bell", "chalk", "class", "lesson", "exam", "pencil"],
    "a farm": ["cow", "barn", "hay", "field", "tractor", "goat", "fence", "seed"],
}
HELD_WORDS = {
    "a kitchen": ["pan", "spoon", "oven", "plate", "knife", "bowl", "stove", "cup"],
    "the night sky": ["star", "moon", "comet", "dark", "planet", "cloud", "owl", "glow"],
    "a garden": ["rose", "soil", "hose", "bee", "weed", "seed", "grass", "bench"],
    "a library": ["shelf", "novel", "quiet", "page", "reader", "card", "atlas", "lamp"],
}


def topic_task(rng):
    train, held = [], []
    for topic, (seen, unseen) in TOPICS.items():
        for noun in seen:
            for sentence in rng.sample(TOPIC_SENTENCES, 3):
                train.append((topic, sentence.format(noun=noun)))
        for noun in unseen:
            for sentence in TOPIC_HELD_SENTENCES:
                held.append((topic, sentence.format(noun=noun)))
    instruction = "Which topic is this sentence about: sports, food, weather, music or travel?"
    return [
        [{"instruction": instruction, "context": s, "response": t} for t, s in rows]
        for rows in (train, held)
    ]


def korean_task(rng):
    pairs = [(c, n) for c in COLOURS for n in NOUNS]
    rng.shuffle(pairs)
    held, train = pairs[:12], pairs[12:]
    instruction = "Translate the phrase into Korean."
    return [
        [
            {
                "instruction": instruction,
                "context": f"a {c} {n}",
                "response": f"{COLOURS[c]} {NOUNS[n]}",
            }
            for c, n in rows
        ]
        for rows in (train, held)
    ]


def words_task(rng):
    def row(topic, n, words):
        return {
            "instruction": f"Write exactly {n} lowercase words about {topic}, separated by commas.",
            "context": "",
            "response": ", ".join(rng.sample(words, n)),
        }

    train = [row(t, n, w) for t, w in WORDS.items() for n in (2, 3, 4, 5) for _ in range(2)]
    # Held-out references (for the eval loss) are one valid answer; any N lowercase words pass.
    held = [row(t, n, w) for t, w in HELD_WORDS.items() for n in (2, 3, 4, 5)]
    return train, held


def main():
    rng = random.Random(20261206)
    OUT.mkdir(exist_ok=True)
    for name, make in (("topic", topic_task), ("korean", korean_task), ("words", words_task)):
        train, held = make(rng)
        rng.shuffle(train)
        for suffix, rows in (("", train), ("_heldout", held)):
            with open(OUT / f"{name}{suffix}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        print(f"{name}: {len(train)} training, {len(held)} held-out records")


if __name__ == "__main__":
    main()
