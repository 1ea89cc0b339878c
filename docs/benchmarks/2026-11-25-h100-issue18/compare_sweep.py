"""Compare every sweep point's embeddings.h5 with the first point's (16,384 tokens): max relative L2 error per
sequence, ids in the same order. Usage: python compare_sweep.py SWEEP_WORKDIR OUT.json"""

import json
import sys
from pathlib import Path

import h5py
import numpy as np

work = Path(sys.argv[1])
points = sorted(work.glob("p*-*"), key=lambda p: int(p.name[1:].split("-")[0]))
with h5py.File(points[0] / "embeddings.h5", "r") as f:
    ref_ids, ref = f["ids"][()], f["embeddings"][()]
rows = []
for p in points:
    row = {"point": p.name}
    status = p / "status.json"
    if status.exists():
        s = json.loads(status.read_text())
        row.update(status=s.get("status"), reason=s.get("reason"), peak_memory_gb=s.get("peak_memory_gb")
                   or (s.get("summary") or {}).get("peak_memory_gb"))
    if (p / "embeddings.h5").exists():
        with h5py.File(p / "embeddings.h5", "r") as f:
            ids, emb = f["ids"][()], f["embeddings"][()]
        err = np.linalg.norm(emb - ref, axis=1) / np.linalg.norm(ref, axis=1)
        row.update(same_ids=bool((ids == ref_ids).all()), finite=bool(np.isfinite(emb).all()),
                   max_rel_err_vs_first=float(err.max()), median_rel_err_vs_first=float(np.median(err)))
    rows.append(row)
    print(row)
Path(sys.argv[2]).write_text(json.dumps(rows, indent=2))
