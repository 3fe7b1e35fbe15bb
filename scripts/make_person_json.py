"""Regenerate the bundled `person_json` dataset (English and Korean), deterministically.

    python scripts/make_person_json.py

The task: read a sentence about a made-up person and answer with exactly
`{"name": ..., "age": ..., "city": ...}`. A base model does not answer in this format; the
answer is checkable by parsing it. Held-out records use names the training set never shows.
"""

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src" / "kft" / "data" / "bundled"

EN_FIRST = [
    "Alice",
    "Bruno",
    "Chloe",
    "Dmitri",
    "Elena",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Keiko",
    "Liam",
    "Maya",
    "Nadia",
    "Oscar",
    "Priya",
    "Quentin",
    "Rosa",
    "Samir",
    "Tara",
    "Umar",
    "Vera",
    "Wes",
    "Xenia",
    "Yusuf",
    "Zoe",
]
EN_LAST = [
    "Adams",
    "Berg",
    "Costa",
    "Dubois",
    "Evans",
    "Fischer",
    "Garcia",
    "Hansen",
    "Ito",
    "Jensen",
    "Kowalski",
    "Lopez",
    "Moreau",
    "Novak",
    "Olsen",
    "Petrov",
    "Quinn",
    "Rossi",
    "Silva",
    "Tanaka",
]
EN_CITIES = [
    "Lisbon",
    "Oslo",
    "Denver",
    "Kyoto",
    "Nairobi",
    "Lyon",
    "Porto",
    "Austin",
    "Krakow",
    "Valencia",
    "Osaka",
    "Toronto",
    "Dublin",
    "Seville",
    "Quito",
    "Perth",
]
EN_TEMPLATES = [
    "{name} is {age} years old and lives in {city}.",
    "Meet {name}, a {age}-year-old from {city}.",
    "Living in {city}, {name} turned {age} this year.",
    "{name} ({age}) works in {city}.",
    "At {age}, {name} moved to {city}.",
]
KO_FAMILY = ["김", "이", "박", "최", "정", "강", "조", "윤", "장", "임", "한", "오", "서", "신"]
KO_GIVEN = [
    "민지",
    "서준",
    "지우",
    "하은",
    "도윤",
    "수아",
    "예준",
    "지호",
    "서연",
    "현우",
    "유나",
    "태민",
    "다은",
    "준서",
]
KO_CITIES = [
    "서울",
    "부산",
    "대구",
    "인천",
    "광주",
    "대전",
    "울산",
    "수원",
    "전주",
    "제주",
    "춘천",
    "포항",
]
KO_TEMPLATES = [
    "{name} 씨는 {age}살이고 {city}에 삽니다.",
    "{city}에 사는 {name} 씨는 올해 {age}살입니다.",
    "{name}({age}세)은 {city}에서 일합니다.",
    "{age}살의 {name} 씨가 {city}로 이사했습니다.",
]
INSTRUCTIONS = {
    "en": "Extract the person's name, age and city as JSON.",
    "ko": "다음 문장에서 이름, 나이, 도시를 JSON으로 추출하세요.",
}


def record(rng, lang, names):
    name = rng.choice(names)
    age = rng.randint(18, 90)
    if lang == "en":
        city, sentence = rng.choice(EN_CITIES), rng.choice(EN_TEMPLATES)
    else:
        city, sentence = rng.choice(KO_CITIES), rng.choice(KO_TEMPLATES)
    answer = json.dumps({"name": name, "age": age, "city": city}, ensure_ascii=False)
    return {
        "instruction": INSTRUCTIONS[lang],
        "context": sentence.format(name=name, age=age, city=city),
        "response": answer,
    }


def main():
    rng = random.Random(20261123)
    en = [f"{first} {last}" for first in EN_FIRST for last in EN_LAST]
    ko = [f"{f}{g}" for f in KO_FAMILY for g in KO_GIVEN]
    rng.shuffle(en)
    rng.shuffle(ko)
    # Held-out people never appear in training: the model must learn the task, not the names.
    en_train, en_held, ko_train, ko_held = en[60:], en[:60], ko[40:], ko[:40]
    train = [record(rng, "en", en_train) for _ in range(200)] + [
        record(rng, "ko", ko_train) for _ in range(120)
    ]
    held = [record(rng, "en", en_held) for _ in range(40)] + [
        record(rng, "ko", ko_held) for _ in range(24)
    ]
    rng.shuffle(train)
    rng.shuffle(held)
    for name, rows in (("person_json", train), ("person_json_heldout", held)):
        with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        print(f"{name}: {len(rows)} records")


if __name__ == "__main__":
    main()
