"""A deterministic SYNTHETIC knowledge base, so every stage runs offline without the real MEL datasets.

Nothing here is real data. Entities get syllable names, a type/place/field description and a Pillow-drawn
64x64 image (a coloured shape on a background). About 40% of entities share their name with 1–3 others, told
apart only by description words or by image, so a linker has real ambiguity to resolve. Mentions reuse some of
the gold entity's description words in their sentence and carry a perturbed copy of its image (never
byte-identical, ~10% without image); ~1% are NIL. The vocabulary stays a few hundred words.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE_PX = 64
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]  # 70 syllables
TYPES = [
    "river",
    "mountain",
    "city",
    "painter",
    "singer",
    "bridge",
    "ship",
    "castle",
    "company",
    "band",
    "planet",
    "festival",
    "lake",
    "poet",
    "island",
    "temple",
]
PLACES = [
    "north",
    "south",
    "east",
    "west",
    "valley",
    "coast",
    "desert",
    "forest",
    "harbor",
    "highland",
    "delta",
    "plain",
    "canyon",
    "glacier",
    "meadow",
]
FIELDS = [
    "music",
    "trade",
    "history",
    "science",
    "art",
    "sport",
    "farming",
    "faith",
    "war",
    "poetry",
    "medicine",
    "travel",
]
SHAPES = ["circle", "square", "triangle", "star", "diamond", "cross", "ring", "hexagon"]
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 50, 180),
    "orange": (240, 140, 30),
    "cyan": (40, 200, 210),
    "black": (20, 20, 20),
}
BACKGROUNDS = {
    "white": (250, 250, 250),
    "gray": (160, 160, 160),
    "beige": (230, 215, 180),
    "sky": (190, 220, 250),
}
FILLER = (
    "the a an of in on at near with from by about after before during old new famous small large "
    "early late local many some known seen visited photo picture shows view people crowd day night "
    "year season morning evening record story report news team group members guests visitors scene "
    "front side top centre image taken during festival opening event celebrates meets holds"
).split()
VERBS = ["visits", "shows", "meets", "celebrates", "describes", "honours", "remembers", "features"]
AMBIGUOUS_FRACTION = 0.4  # share of entities whose name is shared with 1–3 other entities
NO_IMAGE_FRACTION = 0.10
NIL_FRACTION = 0.01


def _name(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
        if name not in taken:
            taken.add(name)
            return name


def _draw(attrs: dict) -> Image.Image:
    """The entity's image: its shape in its colour on its background; position/size from its seed."""
    img = Image.new("RGB", (IMAGE_SIZE_PX, IMAGE_SIZE_PX), BACKGROUNDS[attrs["background"]])
    draw = ImageDraw.Draw(img)
    colour, (cx, cy, r) = COLOURS[attrs["colour"]], attrs["geometry"]
    box = (cx - r, cy - r, cx + r, cy + r)
    shape = attrs["shape"]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(3, r // 3))
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "cross":
        draw.rectangle((cx - r, cy - r // 3, cx + r, cy + r // 3), fill=colour)
        draw.rectangle((cx - r // 3, cy - r, cx + r // 3, cy + r), fill=colour)
    else:
        sides = {"triangle": 3, "diamond": 4, "hexagon": 6, "star": 5}[shape]
        rotation = 45 if shape == "diamond" else 0
        if shape == "star":  # five points: outer and inner radius alternate
            points = [
                (
                    cx + (r if k % 2 == 0 else r * 0.45) * math.sin(math.pi * k / 5),
                    cy - (r if k % 2 == 0 else r * 0.45) * math.cos(math.pi * k / 5),
                )
                for k in range(10)
            ]
            draw.polygon(points, fill=colour)
        else:
            draw.regular_polygon((cx, cy, r), sides, rotation=rotation, fill=colour)
    return img


def _perturb(img: Image.Image, nrng: np.random.Generator) -> Image.Image:
    """A photo-like variant: rotate, shift, rescale and add noise (noise makes it never byte-identical)."""
    bg = img.getpixel((0, 0))
    out = img.rotate(float(nrng.uniform(-25, 25)), fillcolor=bg)
    scale = float(nrng.uniform(0.8, 1.2))
    size = max(16, int(IMAGE_SIZE_PX * scale))
    out = out.resize((size, size), Image.BILINEAR)
    canvas = Image.new("RGB", (IMAGE_SIZE_PX, IMAGE_SIZE_PX), bg)
    dx, dy = (int(v) for v in nrng.integers(-6, 7, size=2))
    canvas.paste(out, ((IMAGE_SIZE_PX - size) // 2 + dx, (IMAGE_SIZE_PX - size) // 2 + dy))
    pixels = np.asarray(canvas, dtype=np.int16) + nrng.integers(
        -18, 19, size=(IMAGE_SIZE_PX, IMAGE_SIZE_PX, 3)
    )
    pixels[0, 0] += 1 if pixels[0, 0, 0] < 255 else -1  # a guaranteed difference even if noise cancels out
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _entities(n_entities: int, rng: random.Random) -> list[dict]:
    """Entities in name groups: ~40% in groups of 2–4 sharing a name, distinct by type/place and image."""
    taken: set[str] = set()
    entities: list[dict] = []
    n_grouped_target, n_grouped = int(n_entities * AMBIGUOUS_FRACTION), 0
    while len(entities) < n_entities:
        size = rng.choice((2, 2, 3, 4)) if n_grouped < n_grouped_target else 1
        size = min(size, n_entities - len(entities))
        n_grouped += size if size > 1 else 0
        name = _name(rng, taken)
        types, places = rng.sample(TYPES, size), rng.sample(PLACES, size)
        looks = rng.sample([(s, c) for s in SHAPES for c in COLOURS], size)
        for k in range(size):
            i = len(entities)
            attrs = {
                "type": types[k],
                "place": places[k],
                "field": rng.choice(FIELDS),
                "shape": looks[k][0],
                "colour": looks[k][1],
                "background": rng.choice(list(BACKGROUNDS)),
                "geometry": (rng.randint(24, 40), rng.randint(24, 40), rng.randint(12, 20)),
            }
            aliases = [f"{name} {attrs['place'].capitalize()}"] if rng.random() < 0.5 else []
            if len(name) > 4 and rng.random() < 0.3:
                aliases.append(name[:4])
            description = (
                f"{name} is a {attrs['type']} of the {attrs['place']} known for {attrs['field']}. "
                f"Its emblem is a {attrs['colour']} {attrs['shape']}."
            )
            entities.append(
                {
                    "id": f"E{i:05d}",
                    "name": name,
                    "aliases": aliases,
                    "description": description,
                    "image": f"images/E{i:05d}.png",
                    "type": attrs["type"],
                    "attrs": attrs,
                    "group_size": size,
                }
            )
    return entities


def _sentence(mention: str, attrs: dict, rng: random.Random) -> str:
    """A context that reuses 1–3 of the gold entity's description words among filler words."""
    cues = [w for w in (attrs["type"], attrs["place"], attrs["field"]) if rng.random() < 0.6]
    cues = cues or [rng.choice((attrs["type"], attrs["place"], attrs["field"]))]
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, 4))] + [mention, rng.choice(VERBS)]
    words += [w for cue in cues for w in (rng.choice(FILLER), cue)]
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def _splits(n: int, rng: random.Random) -> list[str]:
    n_train, n_dev = round(n * 0.70), round(n * 0.15)
    labels = ["train"] * n_train + ["dev"] * n_dev + ["test"] * (n - n_train - n_dev)
    rng.shuffle(labels)
    return labels


def write_sample_kb(out_dir, n_entities: int = 300, n_mentions: int = 1200, seed: int = 0) -> dict:
    """Write the synthetic KB: `entities.jsonl`, `mentions.jsonl`, `images/`. Same seed, same bytes."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    entities = _entities(n_entities, rng)
    pictures = {}
    for ent in entities:
        pictures[ent["id"]] = _draw(ent["attrs"])
        pictures[ent["id"]].save(out / ent["image"], format="PNG")

    splits, mentions, taken = _splits(n_mentions, rng), [], {e["name"] for e in entities}
    for i in range(n_mentions):
        mid = f"M{i:06d}"
        if rng.random() < NIL_FRACTION:
            gold, surface = None, _name(rng, taken)
            attrs = {"type": rng.choice(TYPES), "place": rng.choice(PLACES), "field": rng.choice(FIELDS)}
        else:
            gold = rng.choice(entities)
            use_alias = gold["aliases"] and rng.random() < 0.2
            surface, attrs = (rng.choice(gold["aliases"]) if use_alias else gold["name"]), gold["attrs"]
        image = None
        if gold is not None and rng.random() >= NO_IMAGE_FRACTION:
            image = f"images/{mid}.png"
            _perturb(pictures[gold["id"]], nrng).save(out / image, format="PNG")
        mentions.append(
            {
                "id": mid,
                "mention": surface,
                "sentence": _sentence(surface, attrs, rng),
                "image": image,
                "answer": gold["id"] if gold else "nil",
                "split": splits[i],
            }
        )

    with open(out / "entities.jsonl", "w", encoding="utf-8") as f:
        for ent in entities:
            row = {k: ent[k] for k in ("id", "name", "aliases", "description", "image", "type")}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(out / "mentions.jsonl", "w", encoding="utf-8") as f:
        for row in mentions:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    names = [e["name"] for e in entities]
    return {
        "out_dir": str(out),
        "entities": len(entities),
        "mentions": len(mentions),
        "entities_path": str(out / "entities.jsonl"),
        "mentions_path": str(out / "mentions.jsonl"),
        "ambiguous_entities": sum(1 for e in entities if e["group_size"] > 1),
        "shared_names": len({n for n in names if names.count(n) > 1}),
        "nil_mentions": sum(1 for m in mentions if m["answer"] == "nil"),
        "mentions_without_image": sum(1 for m in mentions if m["image"] is None),
        "splits": {s: splits.count(s) for s in ("train", "dev", "test")},
    }
