"""Post-hoc studies on the held-out predictions of the shipped recipe: each dev source scored by
a model trained with plain `triage train` on the other sources (what `triage eval
--leave-one-out source` does), then two ideas that need the per-row held-out scores. Run by
training/heldout.sh, which trains the four models and writes their scores and the serving
featurizer's vectors first. Prints Markdown tables for models/MODEL_CARD.md.

1. The held-out figures recomputed from the per-row scores (they must equal the leave-one-out
   evaluation's, which shows the models here are the ones it measures).
2. Shrinking towards the dearer tier when a prompt is unlike the training rows: the held-out
   score's logit plus beta per standard deviation of novelty (1 - mean cosine to the 10 nearest
   training rows) above the q-quantile of the training rows' own novelty.
3. A non-linear learner: gradient-boosted trees over the 34 scalar features (no embedding),
   fitted on the other sources (each source the same total weight) to the cheap tier's
   shortfall, alone and added to triage's score at the same spread.
"""
import json
import sys

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

from study import PAIR, apgr, load

DATA, WORK = sys.argv[1], sys.argv[2]
GROUPS = sorted(PAIR)
# Each tier's models, cheapest first, from training/tiers.txt: a source's cheap model names the
# tier whose served score ranks it.
TIERS = [t.split("=", 1)[1].split("|") for t in open("training/tiers.txt").read().strip().split(",")]
CHEAP = {g: next(k for k, models in enumerate(TIERS) if PAIR[g][0] in models) for g in GROUPS}


def logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


rows, names, x, src, emb, weak, strong = load(DATA, WORK)
served = {}
for g in GROUPS:
    for line in open(f"{WORK}/scores_{g}.jsonl"):
        d = json.loads(line)
        served[d["id"]] = d["served"][CHEAP[g]]
served = np.array([served[r["id"]] for r in rows])
length = x[:, names.index("log_prompt_tokens")]


def table(title, variants):
    """variants: (label, {group: need of the dearer tier for the group's rows, in row order})."""
    print(f"| {title} | " + " | ".join(GROUPS) + " | mean | pooled |")
    print("| --- " * (len(GROUPS) + 3) + "|")
    for label, by in variants:
        figs = [apgr(weak[src == g], strong[src == g], by[g]) for g in GROUPS]
        # Pooled: every held-out row ranked by its own model's need (transfer.rs).
        pooled = np.empty(len(rows))
        for g in GROUPS:
            pooled[src == g] = by[g]
        pooled = apgr(weak, strong, pooled)
        print(f"| {label} | " + " | ".join(f"{f:.3f}" for f in figs)
              + f" | {np.mean(figs):.3f} | {pooled:.3f} |")
    print()


# The held-out need of the dearer tier: minus the logit of the cheap tier's served score.
base = {g: -logit(served[src == g]) for g in GROUPS}
table("held-out scores", [("triage (shipped recipe)", base),
                          ("length", {g: length[src == g] for g in GROUPS})])


def knn_sim(query, ref, k=10, skip_self=False):
    out = np.zeros(len(query))
    for a in range(0, len(query), 1024):
        s = emb[query[a:a + 1024]] @ emb[ref].T
        if skip_self:
            s[np.arange(s.shape[0]), np.searchsorted(ref, query[a:a + 1024])] = -1
        out[a:a + 1024] = np.partition(s, -k, axis=1)[:, -k:].mean(1)
    return out


rng = np.random.default_rng(7)
nov, ref_nov = {}, {}
for g in GROUPS:
    te, tr = np.where(src == g)[0], np.where(src != g)[0]
    nov[g] = 1 - knn_sim(te, tr)
    sample = np.sort(rng.choice(tr, min(2000, len(tr)), replace=False))
    ref_nov[g] = 1 - knn_sim(sample, tr, skip_self=True)
variants = [("no shrinkage", base)]
for q in (0.9, 0.99):
    for beta in (0.05, 0.2, 1.0):
        variants.append((f"q = {q}, beta = {beta}", {
            g: base[g] + beta * np.maximum(0, nov[g] - np.quantile(ref_nov[g], q)) / ref_nov[g].std()
            for g in GROUPS}))
table("shrink by novelty", variants)

scalar = [i for i, n in enumerate(names) if not n.startswith("emb_")]
# The cheap tier's shortfall: graded on AlpacaEval (gpt-4 scores 0.5 against itself).
short = np.where(src == "alpaca_eval", (0.5 - weak) / 0.5, strong - weak)
gbm, blend = {}, {}
for g in GROUPS:
    te, tr = src == g, src != g
    w = np.array([1.0 / np.sum(src[tr] == s) for s in src[tr]])
    m = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                      min_samples_leaf=100, l2_regularization=1.0,
                                      early_stopping=False, random_state=7)
    m.fit(x[tr][:, scalar], short[tr] - np.array([short[src == s].mean() for s in src[tr]]),
          sample_weight=w * tr.sum())
    gbm[g] = m.predict(x[te][:, scalar])
    # Equal say per held-out row, triage's level kept so the pooled rows stay comparable.
    blend[g] = base[g] + gbm[g] * base[g].std() / (gbm[g].std() + 1e-12)
table("learner", [("triage (linear heads)", base), ("boosted trees, scalar features", gbm),
                  ("both, equal spread", blend)])
