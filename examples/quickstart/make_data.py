"""Generate the quickstart dataset: extract a person and a city from a sentence as strict JSON.

SmolLM2-135M-Instruct answers this in prose, in a code fence or with other keys, so its exact
match is low; the format is learnable by a LoRA in a few minutes on a CPU. Examples stay short
(about 60 tokens with the chat template) so CPU training is fast. Deterministic: rerunning
rewrites identical files.

    python examples/quickstart/make_data.py   # writes train.jsonl and heldout.jsonl beside it
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 1234
N_TRAIN, N_HELDOUT = 480, 40
INSTRUCTION = "Extract the person and the city as JSON."

NAMES = [
    "Maria",
    "James",
    "Aisha",
    "Kenji",
    "Olga",
    "Pedro",
    "Fatima",
    "Liam",
    "Chloe",
    "Ravi",
    "Ingrid",
    "Tomas",
    "Mei",
    "Omar",
    "Sofia",
    "Lukas",
    "Amara",
    "Diego",
    "Hana",
    "Victor",
    "Elena",
    "Noah",
    "Priya",
    "Mateo",
    "Yusuf",
    "Clara",
    "Jonas",
    "Leila",
    "Ethan",
    "Nina",
    "Samuel",
    "Zara",
    "Felix",
    "Ana",
    "Tariq",
    "Greta",
    "Hugo",
    "Ines",
    "Kwame",
    "Lucia",
    "Marek",
    "Nadia",
    "Oscar",
    "Rosa",
    "Stefan",
    "Talia",
    "Umar",
    "Vera",
    "Wei",
    "Yara",
]
CITIES = [
    "Lisbon",
    "Chicago",
    "Nairobi",
    "Osaka",
    "Kyiv",
    "Lima",
    "Cairo",
    "Dublin",
    "Lyon",
    "Mumbai",
    "Oslo",
    "Prague",
    "Shanghai",
    "Tunis",
    "Madrid",
    "Munich",
    "Accra",
    "Bogota",
    "Seoul",
    "Quebec",
    "Athens",
    "Denver",
    "Jakarta",
    "Santiago",
    "Ankara",
    "Vienna",
    "Hamburg",
    "Beirut",
    "Boston",
    "Helsinki",
    "Dakar",
    "Zurich",
    "Porto",
    "Manila",
    "Krakow",
    "Sydney",
    "Geneva",
    "Hanoi",
    "Toronto",
    "Naples",
]
TEMPLATES = [
    "{name} moved to {city} last spring.",
    "Yesterday {name} landed in {city}.",
    "{name} has lived in {city} for ten years.",
    "In {city}, {name} opened a small bakery.",
    "{city} is where {name} grew up.",
    "After the meeting in {city}, {name} took a train home.",
    "{name} was born in {city}.",
    "Our new colleague {name} works from {city}.",
    "The photos from {city} were taken by {name}.",
    "{name} spent the summer walking around {city}.",
    "Last week {name} gave a talk in {city}.",
    "{name} sold the old house in {city}.",
    "A letter from {city} arrived for {name}.",
    "{name} studies music in {city}.",
    "Tickets to {city} were booked by {name} this morning.",
    "{name} and a friend visited {city}.",
]
# Held out entirely: the metric also measures whether the format carries over to new phrasings.
HELDOUT_TEMPLATES = [
    "Next month {name} will fly to {city}.",
    "Everyone in {city} knows {name}.",
]


def example(name: str, city: str, template: str) -> dict:
    sentence = template.format(name=name, city=city)
    reply = json.dumps({"name": name, "city": city})
    return {
        "messages": [
            {"role": "user", "content": f"{INSTRUCTION}\n{sentence}"},
            {"role": "assistant", "content": reply},
        ]
    }


def make(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    triples = [(n, c, t) for n in NAMES for c in CITIES for t in TEMPLATES]
    rng.shuffle(triples)
    train = [example(*t) for t in triples[:N_TRAIN]]
    seen = set(triples[:N_TRAIN])
    heldout_pool = [(n, c, t) for n in NAMES for c in CITIES for t in TEMPLATES + HELDOUT_TEMPLATES]
    heldout_pool = [t for t in heldout_pool if t not in seen]
    rng.shuffle(heldout_pool)
    # Half the held-out set uses the unseen phrasings, half unseen combinations of seen ones.
    new_phrasing = [t for t in heldout_pool if t[2] in HELDOUT_TEMPLATES][: N_HELDOUT // 2]
    old_phrasing = [t for t in heldout_pool if t[2] not in HELDOUT_TEMPLATES][: N_HELDOUT - len(new_phrasing)]
    heldout = [example(*t) for t in sorted(new_phrasing + old_phrasing, key=lambda t: rng.random())]
    return train, heldout


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main() -> None:
    here = Path(__file__).resolve().parent
    train, heldout = make()
    write_jsonl(here / "train.jsonl", train)
    write_jsonl(here / "heldout.jsonl", heldout)
    print(f"wrote {len(train)} training and {len(heldout)} held-out examples to {here}")


if __name__ == "__main__":
    main()
