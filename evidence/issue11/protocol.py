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
    "P0": (200, {"epochs": 8, "lr": 5e-4}),    # the old quick protocol
    "P1": (1000, {"epochs": 2, "lr": 5e-4}),   # more data, fewer epochs
    "P2": (500, {"epochs": 4, "lr": 5e-4}),    # between the two, same step count as P1
}

ap = argparse.ArgumentParser()
ap.add_argument("--results", default="results/protocol")
ap.add_argument("--only", default=None, help="comma-separated protocols")
ap.add_argument("--tasks", default=",".join(TASKS))
ap.add_argument("--data-dir", default="../shared/datasets")
args = ap.parse_args()
rows = []
tasks = args.tasks.split(",")
only = args.only.split(",") if args.only else list(PROTOCOLS)
cells = [("zero_shot", t, None, 1000, {}) for t in tasks]
cells += [("lora", t, p, PROTOCOLS[p][0], PROTOCOLS[p][1]) for t in tasks for p in only]
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
