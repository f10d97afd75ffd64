#!/usr/bin/env python3
"""Reads a run's TensorBoard event files with tbparse and compares every scalar with
metrics.jsonl (outside CI: needs `pip install tbparse==0.0.9`).

    python3 scripts/check_tensorboard.py adapters/demo

For each stage folder with a `runs/` folder: every metrics.jsonl value must be in the event
files under TRL's tag (`eval_x` -> `eval/x`, else `train/x`) at its step, equal as float32;
no (tag, step) may appear twice; the config must be there as text. Exits non-zero otherwise.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
from tbparse import SummaryReader


def tag_of(key):
    return "eval/" + key[len("eval_"):] if key.startswith("eval_") else "train/" + key


def check_stage(stage_dir):
    runs = stage_dir / "runs"
    reader = SummaryReader(str(runs), extra_columns={"dir_name"})
    scalars = reader.scalars
    texts = reader.text
    seen = {}
    for row in scalars.itertuples():
        key = (row.tag, int(row.step))
        if key in seen:
            raise SystemExit(f"{runs}: {key} appears twice")
        seen[key] = row.value
    expected = {}
    for line in open(stage_dir / "metrics.jsonl"):
        rec = json.loads(line)
        step = rec.pop("step")
        for k, v in rec.items():
            expected[(tag_of(k), step)] = float("nan") if v is None else v
    missing = [k for k in expected if k not in seen]
    extra = [k for k in seen if k not in expected]
    worst = 0.0
    for k, v in expected.items():
        if k not in seen:
            continue
        got, want = seen[k], float(np.float32(v))
        if math.isnan(want) and math.isnan(got):
            continue
        if got != want:
            worst = max(worst, abs(got - want))
    ok = not missing and not extra and worst == 0.0 and len(texts) >= 1
    print(
        f"{stage_dir.name}: {len(seen)} scalars in {len(set(t for t, _ in seen))} tags, "
        f"{len(expected)} in metrics.jsonl, missing {len(missing)}, extra {len(extra)}, "
        f"max |diff| {worst:g} (float32), config texts {len(texts)}: {'OK' if ok else 'MISMATCH'}"
    )
    if missing[:3] or extra[:3]:
        print(f"  missing {missing[:3]} extra {extra[:3]}")
    return ok


def main():
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "adapters/demo")
    stages = [d for d in sorted(run.iterdir()) if (d / "runs").is_dir()]
    if not stages:
        raise SystemExit(f"{run}: no stage folder with TensorBoard event files (report_to)")
    results = [check_stage(d) for d in stages]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
