"""Same questions, other option writings: does a route depend on the benchmark's template?

The dev files write every multiple-choice option as `A. text` on its own line. Other
benchmarks and real traffic write `(A) text`, `A: text`, `a) text`, or all options on one line
(`Answer Choices: (A) 8 (B) 2`). Run by training/formats.sh:

    python3 training/formats.py write IN.jsonl OUT_DIR     # OUT_DIR/<writing>.jsonl
    python3 training/formats.py table OUT_DIR              # Markdown table of the runs

Only the options' labels change; stems, option texts and outcomes stay as they are.
"""
import json
import re
import sys

LABEL = re.compile(r"^([A-J])\. (.*)$")
WRITINGS = {
    "A. text (the dev files)": None,
    "(A) text": lambda l, b: f"({l}) {b}",
    "A: text": lambda l, b: f"{l}: {b}",
    "a) text": lambda l, b: f"{l.lower()}) {b}",
    "one line: (A) text (B) text": "inline",
}
SLUG = {name: f"w{i}" for i, name in enumerate(WRITINGS)}


def rewrite(prompt, how):
    lines = prompt.split("\n")
    stem, options, tail = [], [], []
    for line in lines:
        m = LABEL.match(line)
        if m and not tail and ord(m.group(1)) - 65 == len(options):
            options.append((m.group(1), m.group(2)))
        elif options:
            tail.append(line)
        else:
            stem.append(line)
    if len(options) < 2 or how is None:
        return prompt
    if how == "inline":
        body = ["Answer Choices: " + " ".join(f"({l}) {b}" for l, b in options)]
    else:
        body = [how(l, b) for l, b in options]
    return "\n".join(stem + body + tail)


def write(src, out):
    rows = [json.loads(line) for line in open(src)]
    for name, how in WRITINGS.items():
        with open(f"{out}/{SLUG[name]}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps({**r, "prompt": rewrite(r["prompt"], how)}) + "\n")


def table(out):
    tiers = {}
    for name in WRITINGS:
        tiers[name] = [json.loads(line)["tier"] for line in open(f"{out}/{SLUG[name]}.route")]
    base = tiers[next(iter(WRITINGS))]
    print("| options written as | held-out APGR (length) | 3 tiers, best thresholds (length) "
          "| 3 tiers, own thresholds (quality kept) | shipped model: tier changed |")
    print("| --- | --- | --- | --- | --- |")
    for name in WRITINGS:
        rep = json.load(open(f"{out}/{SLUG[name]}.json"))
        h = next(h for h in rep["held_out"] if h["group"] == "mmlu_pro")["report"]
        c = h["cost"]
        saved = lambda op: 0.0 if op is None else 1 - op["cost"] / c["dearest"]["cost"]
        own = c["router"] or c["dearest"]
        changed = sum(a != b for a, b in zip(base, tiers[name])) / len(base)
        two = h["two_tier"][0]
        print(f"| {name} | {two['router']['apgr']:.3f} ({two['length_baseline']['apgr']:.3f}) "
              f"| {100 * saved(c['router_best']):.1f} % ({100 * saved(c['length_baseline']):.1f} %) "
              f"| {100 * saved(c['router']):.1f} % ({100 * own['quality'] / c['dearest']['quality']:.1f} %) "
              f"| {100 * changed:.1f} % |")


if __name__ == "__main__":
    {"write": lambda: write(sys.argv[2], sys.argv[3]), "table": lambda: table(sys.argv[2])}[sys.argv[1]]()
