"""What the offline studies (signals.py, heldout.py) share: the dev files, each source's
two-tier pair, the APGR of eval.rs, and the rows with the serving featurizer's vectors."""
import json

import numpy as np

FILES = [("mmlu_pro/mmlu_pro_dev", "mmlu_pro_dev"), ("routellm/routellm_dev", "routellm_dev"),
         ("alpaca_eval/alpaca_eval_dev", "alpaca_eval_dev")]
# (cheapest, dearest) per source, as training/tiers.txt maps them.
PAIR = {"mmlu_pro": ("llama-3.1-8b-instruct", "gemini-1.5-pro-002"),
        "mmlu": ("mixtral-8x7b-instruct", "gpt-4-1106-preview"),
        "gsm8k": ("mixtral-8x7b-instruct", "gpt-4-1106-preview"),
        "alpaca_eval": ("gemma-7b-it", "gpt-4-1106-preview")}


def apgr(weak, strong, need):
    """Area under PGR against the strong-call share; ties form one linear step (eval.rs)."""
    n = len(weak)
    gap = strong.mean() - weak.mean()
    order = np.argsort(-need, kind="stable")
    need, gain = need[order], (strong - weak)[order]
    xs, ys, acc, i = [0.0], [0.0], 0.0, 0
    while i < n:
        j = i
        while j < n and need[j] == need[i]:
            acc += gain[j]
            j += 1
        xs.append(j / n)
        ys.append(acc / n / gap)
        i = j
    xs, ys = np.array(xs), np.array(ys)
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))


def load(data, feat):
    """Rows of every dev file in order, their features (dump_features output in `feat`), the
    feature names, each row's source, unit-length embeddings, and the cheap and dear outcomes."""
    rows, mats = [], []
    for path, name in FILES:
        meta = json.load(open(f"{feat}/{name}.json"))
        mats.append(np.fromfile(f"{feat}/{name}.f32", dtype="<f4").reshape(meta["rows"], -1))
        rows += [json.loads(line) for line in open(f"{data}/{path}.jsonl")]
    names = meta["names"]
    x = np.vstack(mats)
    src = np.array([r["source"] for r in rows])
    emb = x[:, [n.startswith("emb_") for n in names]]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-9
    weak = np.array([r["outcomes"][PAIR[r["source"]][0]] for r in rows])
    strong = np.array([r["outcomes"][PAIR[r["source"]][1]] for r in rows])
    return rows, names, x, src, emb, weak, strong
