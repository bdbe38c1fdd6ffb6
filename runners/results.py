"""Result files: atomic writes, phase timings with peak memory, and the environment of a run."""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np
import torch


def write_json_atomic(path: Path, obj) -> None:
    """Write to a temp file in the same directory, then rename: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; a shared results directory needs what the umask allows, like open()
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # never leave a stray temp file in a run directory
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_result(run_dir: Path) -> dict | None:
    """The run's record, or None when it is absent or not a readable record (such a run is rerun)."""
    try:
        rec = json.loads((Path(run_dir) / "result.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def prediction_arrays(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(probs [N, K_max], labels [N]) of prediction rows ({"probs": [...], "label": y}), absent choices 0."""
    K = max(len(r["probs"]) for r in rows)
    return (np.array([r["probs"] + [0.0] * (K - len(r["probs"])) for r in rows]),
            np.array([r["label"] for r in rows]))


def finished(run_dir: Path) -> dict | None:
    """The record of a complete finished run: marked done, its fit present, every prediction file there."""
    run_dir = Path(run_dir)
    rec = read_result(run_dir)
    if not rec or rec.get("status") != "done":
        return None
    fit = (rec.get("fit") or {}).get("dir")  # runners/fits.py; runs written before it hold their artifacts
    if not (run_dir / "artifacts").is_dir() and not (fit and (run_dir.parent / fit / "artifacts").is_dir()):
        return None
    if any(not (run_dir / "predictions" / f"{_stem(t)}.jsonl").is_file() for t in rec.get("metrics", {})):
        return None
    return rec


def _stem(task: str) -> str:
    from tasks import file_stem
    return file_stem(task)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Phases:
    """Wall time and memory per phase: `with phases("fit"): ...`.

    CPU memory is the process's peak RSS so far (the OS keeps no per-phase peak); on CUDA the peak
    allocated memory is reset at each phase start, so it is per phase.
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.memory: dict[str, dict] = {}

    @contextmanager
    def __call__(self, name: str):
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            mem = {"peak_rss_mb": round(peak_rss_mb(), 1)}
            if cuda:
                mem["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            self.memory[name] = mem


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment(device: torch.device) -> dict:
    versions = {}
    for pkg in ("torch", "transformers", "peft", "datasets", "numpy", "laplace-torch", "optuna", "bitsandbytes"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
            "git_commit": git_commit(), "device": str(device), "torch_threads": torch.get_num_threads(),
            "cuda_device": torch.cuda.get_device_name() if device.type == "cuda" else None}


def check_results_dir(path: Path) -> None:
    """Fail early, in one line and writing nothing, when results cannot be written under `path`."""
    from methods.base import ConfigError
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--results {p} is a file, not a directory; give a directory")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"--results {p}: {probe} is a file, not a directory")
    try:  # os.access is no test as root: try to write (and remove) a file
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise ConfigError(f"--results {p}: cannot write in {probe} ({e.strerror}); choose a writable directory") \
            from None
