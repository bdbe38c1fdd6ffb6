"""The protocol table of README "Choosing CPU presets", from the records in evidence/issue11/protocol/:
per task and protocol, validation ACC, mean confidence, ECE, NLL, and the accuracy gain over zero-shot with a
95% paired bootstrap interval over validation questions (1000 resamples, seed 0).

    python evidence/issue11/protocol_table.py
"""
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent / "protocol"
sys.path.insert(0, str(HERE.parents[2]))
from tasks import file_stem  # noqa: E402


def load(run: Path, task: str):
    rows = [json.loads(x) for x in open(run / "predictions" / f"{file_stem(task)}.jsonl")]
    return {r["id"]: (int(np.argmax(r["probs"])) == r["label"]) for r in rows}


def main() -> None:
    recs = [(d, json.loads((d / "result.json").read_text())) for d in sorted(HERE.iterdir())]
    zero = {r["config"]["task"]: d for d, r in recs if r["config"]["method"] == "zero_shot"}
    print("| task | protocol (questions x epochs, lr) | n | ACC | mean conf. | conf. - ACC | ECE | NLL | "
          "ACC - zero-shot [95% CI] | final train loss |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for d, r in sorted(recs, key=lambda x: (x[1]["config"]["task"], x[1]["config"]["method"] != "zero_shot",
                                            x[1]["config"].get("limit_train") or 0)):
        c, t = r["config"], r["config"]["task"]
        m = r["metrics"][t]
        if c["method"] == "zero_shot":
            proto, gain, loss = "zero-shot", "—", "—"
        else:
            s = c["settings"]
            proto = f"{c['limit_train']} x {s['epochs']}, lr {s['lr']:g}"
            a, z = load(d, t), load(zero[t], t)
            ids = sorted(a)
            diff = np.array([a[i] - z[i] for i in ids], dtype=float)
            boots = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(1000)]
            gain = f"{diff.mean():+.3f} [{np.percentile(boots, 2.5):+.3f}, {np.percentile(boots, 97.5):+.3f}]"
            loss = f"{r['method']['fitted']['final_loss']:.3f}"
        print(f"| {t} | {proto} | {m['n']} | {m['acc']:.3f} | {m['mean_conf']:.3f} | "
              f"{m['mean_conf'] - m['acc']:+.3f} | {m['ece']:.3f} | {m['nll']:.3f} | {gain} | {loss} |")


if __name__ == "__main__":
    main()
