#!/usr/bin/env python3
"""Outside CI: held-out preference accuracy from `lora-dpo eval --per-row` JSON files: the share of pairs with
log p(chosen) > log p(rejected) under the adapter, and under the base (ref_*).  python scripts/pref_accuracy.py F.json..."""
import json, sys
for f in sys.argv[1:]:
    rows = json.load(open(f))["per_row"]
    acc = sum(r["chosen_logps"] > r["rejected_logps"] for r in rows) / len(rows)
    base = sum(r["ref_chosen_logps"] > r["ref_rejected_logps"] for r in rows) / len(rows)
    m = sum(r["chosen_logps"] - r["rejected_logps"] for r in rows) / len(rows)
    print(f"{f}: accuracy {acc:.3f} (base {base:.3f}), mean margin {m:.2f}, mean logp chosen "
          f"{sum(r['chosen_logps'] for r in rows)/len(rows):.2f}")
