"""Per cell of a results directory: ID and OOD metrics, the posterior diagnostics and what was fitted.

    python evidence/issue11/summary.py evidence/issue11/quick-v2
"""
import json
import sys
from pathlib import Path


def main(root: str) -> None:
    print("| method | set | n | ACC | conf | ECE | NLL | MI | TV to MAP | flags | fitted (posterior) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for f in sorted(Path(root).glob("*/result.json")):
        r = json.loads(f.read_text())
        if r.get("status") != "done":
            continue
        post = r["method"]["fitted"].get("posterior", {})
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in post.items()
                          if not k.startswith("sigma_m"))
        for t, m in r["metrics"].items():
            d = m.get("diagnostics", {})
            tv = d.get("tv_to_point")
            print(f"| {r['config']['method']} | {t} | {m['n']} | {m['acc']:.3f} | {m['mean_conf']:.3f} | {m['ece']:.3f} | "
                  f"{m['nll']:.3f} | {d.get('mutual_information', 0):.4f} | {'—' if tv is None else f'{tv:.3f}'} | "
                  f"{','.join(d.get('flags', [])) or 'ok'} | {shown if t == r['config']['task'] else ''} |")


if __name__ == "__main__":
    main(sys.argv[1])
