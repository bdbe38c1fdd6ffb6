"""Choose the CPU training protocol by evidence on VALIDATION splits (issue 11): zero-shot vs lora under
candidate protocols on three ID tasks. Each cell is an ordinary run with eval_split=validation.

    .venv/bin/python evidence/issue11/protocol.py --results results/protocol [--only P1]
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from runners.config import build_run_config  # noqa: E402
from runners.run import execute  # noqa: E402

TASKS = ("arc_easy", "obqa", "arc_challenge")
PROTOCOLS = {  # name: (limit_train, lora settings)
    "P1": (1000, {"epochs": 2, "lr": 5e-4}),
    "P0": (200, {"epochs": 8, "lr": 5e-4}),
}

ap = argparse.ArgumentParser()
ap.add_argument("--results", default="results/protocol")
ap.add_argument("--only", default=None)
ap.add_argument("--data-dir", default="../shared/datasets")
args = ap.parse_args()
rows = []
cells = [("zero_shot", t, None, 1000, {}) for t in TASKS]
cells += [("lora", t, p, lt, s) for p, (lt, s) in PROTOCOLS.items() if args.only in (None, p) for t in TASKS]
for method, task, proto, lt, settings in cells:
    cfg = build_run_config(method, task, settings, limit_train=lt, limit_eval=250, eval_split="validation")
    t0 = time.time()
    rec = execute(cfg, Path(args.results), args.data_dir)
    m = rec["metrics"][task]
    row = {"method": method, "protocol": proto, "task": task, "limit_train": lt, **settings,
           "n": m["n"], "acc": round(m["acc"], 4), "mean_conf": round(m["mean_conf"], 4), "ece": round(m["ece"], 4),
           "nll": round(m["nll"], 4), "run_id": rec["run_id"], "seconds": round(time.time() - t0, 1)}
    print(json.dumps(row), flush=True)
    rows.append(row)
