"""A CLIP BPE tokenizer whose vocabulary we generate, so no file is downloaded.

Every byte is a token (so any caption tokenizes), and each word of the miniature
world's vocabulary is merged into a single token so the tiny text encoder sees words,
not letters.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer


def _bytes_to_unicode() -> list[str]:
    # The same reversible byte->printable-char table that GPT-2 and CLIP use.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _bpe(word: str, ranks: dict[str, int]) -> list[str]:
    """Apply merges to one word the way CLIP's BPE does: lowest-ranked pair first."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get(f"{a} {b}"), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        known = [(r, i) for r, i in pairs if r is not None]
        if not known:
            break
        _, i = min(known)
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def _chain(word: str) -> list[str]:
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    merges, left = [], pieces[0]
    for right in pieces[1:]:
        merges.append(f"{left} {right}")
        left += right
    return merges


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[str]]:
    """Return (vocab, merges) for a byte-level vocabulary plus one token per word.

    A word's merge chain can be broken by another word's earlier merge (\"tr\" from
    \"triangle\" splits \"striped\"), so words that come out split get their chains
    moved to the front until every word is one token, or no order helps.
    """
    order = sorted(set(words), key=lambda w: (-len(w), w))
    for _ in range(len(order)):
        merges = list(dict.fromkeys(m for w in order for m in _chain(w)))
        ranks = {m: i for i, m in enumerate(merges)}
        split = [w for w in order if len(_bpe(w, ranks)) > 1]
        if not split:
            break
        order = split + [w for w in order if w not in split]
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars]
    tokens += list(dict.fromkeys(m.replace(" ", "") for m in merges))
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}, merges


def write_tokenizer(folder: Path, words: list[str], max_length: int = 77) -> CLIPTokenizer:
    """Write vocab.json and merges.txt into `folder` and save a CLIPTokenizer there."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=max_length)
    tokenizer.save_pretrained(folder)
    return tokenizer
