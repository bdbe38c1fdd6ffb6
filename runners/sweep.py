"""Sweeps: a YAML grid (model x methods x tasks with OOD sets x seeds) expanded into run cells.

Every cell is the same idempotent unit as `benchmark.py run` (content-hashed; skipped when done). Post-hoc
cells depend on the `lora` cell of the same task, seed, data and LoRA settings: that base cell is part of
the plan, runs first, and is trained once however many post-hoc methods reuse it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from methods.base import ConfigError
from methods.registry import get_method
from runners.config import RunConfig, base_run_config, build_run_config
from runners.results import finished, read_result

PRESET_DIR = Path(__file__).resolve().parent / "presets"
RUN_KEYS = ("model", "scoring", "normalization", "limit_train", "limit_eval", "split_seed", "val_fraction",
            "precision", "quant", "eval_batch_size", "n_samples")


@dataclass
class Cell:
    cfg: RunConfig
    depends_on: str | None = None   # fit id of the base it starts from (fitted once, by whichever cell is first)

    @property
    def run_id(self) -> str:
        return self.cfg.run_id


@dataclass
class Plan:
    name: str
    cells: list[Cell] = field(default_factory=list)  # dependency order: bases before their dependants

    def status(self, results: Path) -> dict[str, str]:
        out = {}
        for c in self.cells:
            rec = read_result(Path(results) / c.run_id)
            if rec and rec.get("status") == "done" and not finished(Path(results) / c.run_id):
                out[c.run_id] = "incomplete"  # marked done but missing files: it will be rerun
            else:
                out[c.run_id] = rec["status"] if rec else "missing"
        return out


def load_spec(path_or_preset: str) -> dict:
    p = Path(path_or_preset)
    if not p.is_file():
        p = PRESET_DIR / f"{path_or_preset}.yaml"
    if not p.is_file():
        names = sorted(x.stem for x in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"sweep file {path_or_preset!r} not found (presets: {', '.join(names)})")
    try:
        spec = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{p}: expected a mapping with methods, tasks and seeds")
    spec.setdefault("name", p.stem)
    return spec


def _methods(spec: dict) -> list[tuple[str, dict]]:
    """`methods:` entries are a name, or {name: {settings}}."""
    out = []
    for m in spec.get("methods") or []:
        if isinstance(m, str):
            out.append((m, {}))
        elif isinstance(m, dict) and len(m) == 1:
            name, settings = next(iter(m.items()))
            out.append((name, dict(settings or {})))
        else:
            raise ConfigError(f"methods entry {m!r}: write a name or {{name: {{setting: value}}}}")
    if not out:
        raise ConfigError("the sweep lists no methods")
    return out


def _tasks(spec: dict) -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for t in spec.get("tasks") or []:
        if isinstance(t, str):
            out.append((t, tuple(spec.get("ood") or ())))
        elif isinstance(t, dict) and "task" in t:
            out.append((t["task"], tuple(t.get("ood") or spec.get("ood") or ())))
        else:
            raise ConfigError(f"tasks entry {t!r}: write a name or {{task: name, ood: [..]}}")
    if not out:
        raise ConfigError("the sweep lists no tasks")
    return out


def expand(spec: dict) -> Plan:
    """All cells of the grid, validated, deduplicated, bases first."""
    unknown = set(spec) - {"name", "methods", "tasks", "seeds", "ood", "base_settings", *RUN_KEYS}
    if unknown:
        raise ConfigError(f"unknown sweep keys: {', '.join(sorted(unknown))}")
    run_kw = {k: spec[k] for k in RUN_KEYS if k in spec}
    seeds = spec.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                           for s in seeds):
        raise ConfigError(f"seeds: {seeds!r} must be a non-empty list of non-negative integers, e.g. [0, 1, 2]")
    base_settings = dict(spec.get("base_settings") or {})
    plan, seen = Plan(spec["name"]), set()

    def add(cell: Cell):
        if cell.run_id not in seen:
            seen.add(cell.run_id)
            plan.cells.append(cell)

    dependants = []
    for task, ood in _tasks(spec):
        for seed in seeds:
            for name, settings in _methods(spec):
                cls = get_method(name)
                settings = dict(settings)
                own_base = settings.pop("base_settings", None) or {}  # this method's base adapter (l_lora_xs)
                extra = {"base_settings": {**base_settings, **own_base}} if cls.posthoc else {}
                cfg = build_run_config(name, task, settings, seed=seed, ood=ood, **run_kw, **extra)
                base = base_run_config(cfg)  # only its fit is needed (runners/fits.py): no cell of its own
                if base is not None:
                    dependants.append(Cell(cfg, depends_on=base.fit_id))
                else:
                    add(Cell(cfg))
    for c in dependants:
        add(c)
    return plan


def estimate_seconds(plan: Plan, results: Path) -> float:
    """Rough cost: the mean wall time of finished runs of the same method (and model) in `results`,
    else a per-method guess scaled by the training-set limit."""
    seen: dict[tuple, list[float]] = {}
    for f in Path(results).glob("*/result.json"):
        try:
            r = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if r.get("status") == "done":
            seen.setdefault((r["config"]["method"], r["config"]["model"]), []).append(sum(r["timings"].values()))
    total = 0.0
    for c in plan.cells:
        past = seen.get((c.cfg.method, c.cfg.model))
        total += sum(past) / len(past) if past else _guess_seconds(c.cfg)
    return total


def _guess_seconds(cfg: RunConfig) -> float:
    """SmolLM2-135M rates measured on 2 CPU cores (bf16, packed loglik): ~0.15 s per training example-epoch,
    ~0.05 s per evaluated example and posterior sample. Other models: scaled by nothing (rough by design)."""
    cls, s = get_method(cfg.method), cfg.settings
    n_train = cfg.limit_train or 2000
    epochs = s.get("epochs", 0) if not cls.posthoc else 0
    members = s.get("members", 1)
    samples = cls.samples_for(cfg.method_config(), cfg.n_samples)
    n_eval = (cfg.limit_eval or 1000) * (1 + len(cfg.ood))
    secs = 0.15 * n_train * epochs * members + 0.05 * n_eval * samples + (60 if cls.posthoc else 10)
    return secs * (0.02 if cfg.model == "tiny-random-llama" else 1.0)


def describe(plan: Plan, results: Path) -> str:
    st = plan.status(results)
    done = sum(v == "done" for v in st.values())
    failed = sum(v == "failed" for v in st.values())
    bases = {c.depends_on for c in plan.cells if c.depends_on}
    users = {b: sum(c.depends_on == b for c in plan.cells) for b in bases}
    lines = [f"sweep {plan.name}: {len(plan.cells)} cells, {done} done, {failed} failed, "
             f"{len(plan.cells) - done - failed} to run"]
    for b, n in sorted(users.items()):
        lines.append(f"  shared: fit {b} is fitted once and reused by {n} post-hoc/ensemble cells")
    todo = Plan(plan.name, [c for c in plan.cells if st[c.run_id] != "done"])
    lines.append(f"  rough cost of what is left: {estimate_seconds(todo, results) / 60:.1f} min on this machine")
    for c in plan.cells:
        lines.append(f"  [{st[c.run_id]:>7}] {c.run_id}" + (f"  (from fit {c.depends_on})" if c.depends_on else ""))
    return "\n".join(lines)
