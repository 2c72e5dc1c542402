"""Single signals on each dev source held out: how well does one signal alone rank the source's
prompts (two-tier APGR, the source's cheapest tier against the dearest), computed only from the
*other* sources' rows? Run by training/signals.sh, which dumps the serving featurizer's vectors
first. Prints a Markdown table for models/MODEL_CARD.md.

Signals:
- length: prompt tokens (the baseline the router must beat).
- novelty: 1 - mean cosine of the prompt's embedding to its 10 nearest rows of the other
  sources ("unlike anything trained on" leans to the dearer tier).
- neighbours: the mean need-the-dearer-tier label of the 100 nearest rows of the other
  sources (each source's labels centred on its own mean, so base rates do not leak).
- category oracle: each category's own mean gain (dearest minus cheapest) on the very rows
  scored. Not a router: an upper bound of what knowing a prompt's subject could give, which
  shows how much of a source's in-file figure is its subjects' quirks.

A second table scores text statistics of the question stem (the prompt less any lettered
options) that speak of difficulty in general rather than of one benchmark: the length of its
first paragraph (the instruction without pasted material), readability, constraint and
condition words, negations. Each signal's direction (harder when larger or
when smaller) is taken from the other sources' rows, like everything else here. A third
scores the disagreement of models fitted on each other source.
"""
import math
import re
import sys

import numpy as np
from tokenizers import Tokenizer

from study import apgr, load

DATA = sys.argv[1]
FEAT = sys.argv[2]
rows, names, x, src, emb, weak, strong = load(DATA, FEAT)
# AlpacaEval's scores are the judge's preference against gpt-4 (which scores 0.5).
need = np.where(src == "alpaca_eval", weak < 0.5, weak < strong).astype(float)
for s in set(src):
    need[src == s] -= need[src == s].mean()


def nearest(query, ref, k):
    """Per query row, the indices into ref of its k nearest rows by cosine, and their mean cosine."""
    idx, sim = np.zeros((len(query), k), dtype=int), np.zeros(len(query))
    for a in range(0, len(query), 1024):
        s = emb[query[a:a + 1024]] @ emb[ref].T
        top = np.argpartition(s, -k, axis=1)[:, -k:]
        idx[a:a + 1024] = ref[top]
        sim[a:a + 1024] = np.take_along_axis(s, top, axis=1).mean(1)
    return idx, sim


print("| held-out source | rows | length | novelty | neighbours (k=100) | category oracle |")
print("| --- | --- | --- | --- | --- | --- |")
for g in sorted(set(src)):
    te, tr = np.where(src == g)[0], np.where(src != g)[0]
    w, s = weak[te], strong[te]
    _, sim10 = nearest(te, tr, 10)
    idx100, _ = nearest(te, tr, 100)
    knn = need[idx100].mean(1)
    cat = np.array([rows[i].get("category") or "-" for i in te])
    gain = {c: (s[cat == c] - w[cat == c]).mean() for c in set(cat)}
    oracle = f"{apgr(w, s, np.array([gain[c] for c in cat])):.3f}" if len(gain) > 1 else "—"
    print(f"| {g} | {len(te):,} | {apgr(w, s, x[te, names.index('log_prompt_tokens')]):.3f} "
          f"| {apgr(w, s, -sim10):.3f} | {apgr(w, s, knn):.3f} | {oracle} |")


OPTION_START = re.compile(r"\n\s*\(?A[.)]\s")
WORD = re.compile(r"[A-Za-z]+")
PATTERNS = {
    "constraint words": r"must|exactly|at least|at most|no more than|without|only|each|every|ensure",
    "negations": r"not|never|no|except|least|false|incorrect",
    "conditions": r"if|then|given|suppose|assume|assuming|because|since|unless|whereas",
    "why / how / explain": r"why|how|explain|describe|compare|analy[sz]e|evaluate|design|prove|derive",
}
PATTERNS = {k: re.compile(rf"\b({v})\b", re.I) for k, v in PATTERNS.items()}


def syllables(w):
    n = len(re.findall(r"[aeiouy]+", w.lower()))
    return max(n - (w.lower().endswith("e") and n > 1), 1)


# The serving tokenizer: a word it splits into many pieces is rare in its training text, the
# long-tail knowledge small models are known to lack.
TOKENIZER = Tokenizer.from_file("models/embeddings/tokenizer.json")


def text_stats(prompt):
    stem = re.sub(r"\nAnswer:\s*$", "", prompt)
    m = OPTION_START.search(stem)
    stem = stem[:m.start()] if m else stem
    words = WORD.findall(stem)
    n = max(len(words), 1)
    sents = max(len(re.findall(r"[.!?](\s|$)", stem)), 1)
    syl = [syllables(w) for w in words] or [1]
    # The instruction without supplied material: a chat prompt often pastes a document, code
    # or reviews after a blank line, and that length need not be difficulty.
    first = re.split(r"\n\s*\n", stem.strip(), maxsplit=1)[0]
    out = {
        "stem words (log)": math.log1p(len(words)),
        "first paragraph words (log)": math.log1p(len(WORD.findall(first))),
        "words per sentence": n / sents,
        "syllables per word": float(np.mean(syl)),
        "reading grade (Flesch-Kincaid)": 0.39 * n / sents + 11.8 * float(np.mean(syl)) - 15.59,
        "distinct words / words": len({w.lower() for w in words}) / n,
        "subword pieces per word (rare words)": float(np.mean(
            [len(e.ids) for e in TOKENIZER.encode_batch(words, add_special_tokens=False)]
            or [1])),
    }
    out.update({k: math.log1p(len(p.findall(stem))) for k, p in PATTERNS.items()})
    return out


stats = [text_stats(r["prompt"]) for r in rows]
labels = list(stats[0])
cols = np.array([[st[k] for k in labels] for st in stats])
groups = sorted(set(src))
print()
print("| text signal (stem) | " + " | ".join(groups) + " | mean |")
print("| --- |" + " --- |" * (len(groups) + 1))
for k, name in enumerate(["prompt tokens (the length baseline)"] + labels):
    col = x[:, names.index("log_prompt_tokens")] if k == 0 else cols[:, k - 1]
    got = []
    for g in groups:
        te, tr = src == g, src != g
        sign = 1.0 if np.corrcoef(col[tr], need[tr])[0, 1] >= 0 else -1.0
        got.append(apgr(weak[te], strong[te], sign * col[te]))
    print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in got) + f" | {np.mean(got):.3f} |")

# Disagreement: one ridge model of the need-the-dearer-tier label per other source (standardized
# features, alpha 100); the spread of their standardized scores on the held-out rows. The issue's
# "shrink when the heads disagree", as a signal on its own.
z = (x - x.mean(0)) / (x.std(0) + 1e-6)
z = np.hstack([z, np.ones((len(z), 1))])
print()
print("| held-out source | disagreement of per-source models |")
print("| --- | --- |")
for g in groups:
    te = src == g
    scores = []
    for s in sorted(set(src) - {g}):
        m = src == s
        w = np.linalg.solve(z[m].T @ z[m] + 100.0 * np.eye(z.shape[1]), z[m].T @ need[m])
        p = z[te] @ w
        scores.append((p - p.mean()) / (p.std() + 1e-9))
    print(f"| {g} | {apgr(weak[te], strong[te], np.std(scores, axis=0)):.3f} |")
