"""Issue 14: nothing lost, nothing faked — cell claims, stale claims, orphans, permissions, what is recorded,
names derived from user paths, studies resumed with other settings, reports over damaged results."""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runners.config import base_run_config, build_run_config
from runners.lock import claim, lock_path
from runners.run import execute
from runners.sweep import expand, load_spec
from tests.helpers import ROOT, assert_bad_input, cli

TINY = dict(model="tiny-random-llama", limit_train=8, limit_eval=6, precision="fp32")
FAST = {"epochs": "1", "batch_size": "4"}


def _env(data_dir):
    return {**os.environ, "BAYESPEFT_DATA_DIR": data_dir}


def test_two_identical_runs_at_once_compute_it_once_and_both_see_it_complete(tmp_path, data_dir):
    results = tmp_path / "r"
    args = [sys.executable, str(ROOT / "benchmark.py"), "run", "--method", "lora", "--task", "arc_easy",
            "--model", "tiny-random-llama", "--precision", "fp32", "--limit-train", "8", "--limit-eval", "6",
            "--set", "epochs=1", "--set", "batch_size=4", "--results", str(results)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(data_dir))
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = [d for d in results.iterdir() if not d.name.startswith(".") and d.name != "fits"]
    rec = json.loads((runs[0] / "result.json").read_text())
    assert len(runs) == 1 and (results / rec["fit"]["dir"] / "artifacts").is_dir()
    assert list((runs[0] / "predictions").iterdir()) and rec["status"] == "done"
    assert len(list((results / "fits").iterdir())) == 1  # one fit, made once
    assert sum("identical run already done" in o for o, _ in outs) == 1  # the second waited, then reused it
    assert not list(results.glob(".lock-*")) and not list(results.glob(".tmp-*"))
    assert not list(runs[0].glob(".*.tmp")) and not list((results / "fits").glob(".tmp-*"))


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    path = lock_path(tmp_path, "cell")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "since": 0}))
    t0 = time.time()
    with claim(tmp_path, "cell", poll=0.05) as waited:
        assert not waited and json.loads(path.read_text())["pid"] == os.getpid()
    assert time.time() - t0 < 5 and not path.exists()


def test_a_lock_nobody_touches_goes_stale(tmp_path):
    path = lock_path(tmp_path, "cell")
    path.write_text(json.dumps({"host": "another-machine", "pid": 1, "since": 0}))
    old = time.time() - 120
    os.utime(path, (old, old))
    with claim(tmp_path, "cell", poll=0.05, stale_s=60):
        assert json.loads(path.read_text())["host"] == socket.gethostname()


def test_orphaned_temp_directory_is_removed_and_files_follow_the_umask(tmp_path, data_dir):
    (tmp_path / ".tmp-lora-dead-run").mkdir(parents=True)
    old = os.umask(0o022)
    try:
        rec = execute(build_run_config("lora", "arc_easy", FAST, **TINY), tmp_path, data_dir=data_dir, device="cpu")
    finally:
        os.umask(old)
    assert not (tmp_path / ".tmp-lora-dead-run").exists()
    mode = stat.S_IMODE((tmp_path / rec["run_id"] / "result.json").stat().st_mode)
    assert mode == 0o644, oct(mode)


def test_a_done_run_without_its_artifacts_is_not_done(tmp_path, data_dir):
    cfg = build_run_config("lora", "arc_easy", FAST, **TINY)
    first = execute(cfg, tmp_path, data_dir=data_dir, device="cpu")
    import shutil
    shutil.rmtree(tmp_path / first["fit"]["dir"] / "artifacts")  # the stored fit lost its files
    again = execute(cfg, tmp_path, data_dir=data_dir, device="cpu")
    assert not again.get("skipped") and not again["fit"]["reused"] and (tmp_path / again["fit"]["dir"] / "artifacts").is_dir()
    assert again["metrics"]["arc_easy"]["acc"] == first["metrics"]["arc_easy"]["acc"]


def test_dry_run_shows_a_done_run_without_predictions_as_incomplete(tmp_path, data_dir):
    import shutil
    plan = expand(load_spec("tiny"))
    lora = next(c for c in plan.cells if c.cfg.method == "lora")
    execute(lora.cfg, tmp_path, data_dir=data_dir, device="cpu")
    assert plan.status(tmp_path)[lora.run_id] == "done"
    shutil.rmtree(tmp_path / lora.run_id / "predictions")
    assert plan.status(tmp_path)[lora.run_id] == "incomplete"
    p = cli("sweep", "tiny", "--dry-run", results=tmp_path, data_dir=data_dir)
    assert p.returncode == 0 and f"[incomplete] {lora.run_id}" in p.stdout, p.stdout


def test_quant_on_the_tiny_model_is_refused_not_recorded(tmp_path, data_dir):
    p = cli("run", "--method", "lora", "--task", "arc_easy", "--model", "tiny-random-llama", "--quant", "4bit",
            results=tmp_path / "r", data_dir=data_dir)
    assert_bad_input(p, "quant", tmp_path / "r")


def test_custom_task_names_stay_inside_the_results_and_report_works(tmp_path, data_dir):
    d = tmp_path / "data" / "mine"
    d.mkdir(parents=True)
    def rows(word):
        return "".join(json.dumps({"question": f"{word} {i}?", "choices": ["yes", "no"], "answer": i % 2}) + "\n"
                       for i in range(6))
    (d / "train.jsonl").write_text(rows("train"))
    (d / "test.jsonl").write_text(rows("test"))
    results = tmp_path / "deep" / "r"
    rel = os.path.relpath(d, ROOT)  # a relative path with ../ in it
    p = cli("run", "--method", "lora", "--task", f"custom:{rel}", "--model", "tiny-random-llama", "--precision",
            "fp32", "--set", "epochs=1", "--set", "batch_size=4", results=results, data_dir=data_dir)
    assert p.returncode == 0, p.stderr
    written = [f for f in tmp_path.rglob("*.jsonl") if "data" not in f.parts]
    assert written and all(results in f.parents for f in written)
    assert all(":" not in f.name and "/" not in f.stem for f in written)
    p = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "report", "--results", str(results),
                        "--bootstrap", "5"], capture_output=True, text=True, env=_env(data_dir), timeout=300)
    assert p.returncode == 0, p.stderr
    assert all(results / "report" in Path(line).parents for line in p.stdout.split())


def test_report_skips_damaged_runs_and_names_them(tmp_path, data_dir):
    cfg = build_run_config("lora", "arc_easy", FAST, **TINY)
    execute(cfg, tmp_path, data_dir=data_dir, device="cpu")
    for name, content in (("bad-list", "[1, 2]"), ("bad-bytes", b"\x89\xff\x00garbage"), ("bad-trunc", '{"status": "do')):
        (tmp_path / name).mkdir()
        f = tmp_path / name / "result.json"
        f.write_bytes(content) if isinstance(content, bytes) else f.write_text(content)
    nopred = tmp_path / "lora-no-predictions"
    import shutil
    shutil.copytree(tmp_path / cfg.run_id, nopred)
    shutil.rmtree(nopred / "predictions")
    p = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "report", "--results", str(tmp_path),
                        "--bootstrap", "5"], capture_output=True, text=True, env=_env(data_dir), timeout=300)
    assert p.returncode == 0, p.stderr
    for name in ("bad-list", "bad-bytes", "bad-trunc", "lora-no-predictions"):
        assert f"skipped {tmp_path / name}" in p.stderr
    assert (tmp_path / "report" / "leaderboard_id.md").is_file()


def test_tune_refuses_to_resume_a_study_with_other_settings(tmp_path, data_dir):
    base = ["tune", "--method", "lora", "--task", "arc_easy", "--model", "tiny-random-llama", "--precision", "fp32",
            "--limit-eval", "6", "--set", "epochs=1"]
    p = cli(*base, "--trials", "1", "--limit-train", "8", results=tmp_path, data_dir=data_dir)
    assert p.returncode == 0, p.stderr
    before = sorted(x.name for x in tmp_path.iterdir())
    p = cli(*base, "--trials", "2", "--limit-train", "16", results=tmp_path, data_dir=data_dir)
    assert p.returncode == 2 and "limit_train" in p.stderr and "8" in p.stderr and "16" in p.stderr, p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == before


@pytest.mark.parametrize("args,needle", [
    (["tune", "--method", "lora", "--task", "arc_easy", "--trials", "1", "--sampler", "cmaes"], "sampler"),
    (["tune", "--method", "lora", "--task", "arc_easy", "--trials", "1", "--storage", "bogus://x"], "storage"),
])
def test_bad_tune_input_writes_nothing(args, needle, tmp_path, data_dir):
    p = cli(*args, "--model", "tiny-random-llama", results=tmp_path / "r", data_dir=data_dir)
    assert_bad_input(p, needle, tmp_path / "r")


def test_a_cell_whose_base_fit_was_claimed_by_a_dead_process_takes_it_over(tmp_path, data_dir):
    """A post-hoc cell needs its base fit; a process that died while fitting it left the fit's lock behind:
    the cell takes the lock over and fits the base itself instead of waiting forever."""
    import socket
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cfg = build_run_config("temperature", "arc_easy", {}, base_settings=FAST, **TINY)
    base = base_run_config(cfg)
    lock = tmp_path / f".lock-fit-{base.fit_id}"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": time.time()}))
    t0 = time.time()
    rec = execute(cfg, tmp_path, data_dir=data_dir, device="cpu")
    assert rec["status"] == "done" and rec["base_run"] == base.fit_id and time.time() - t0 < 120
    assert not lock.exists()


# ---- the bad-input table: every case exits 2 with one `error:` line naming the problem, nothing written -----
RUN = ["run", "--method", "lora", "--task", "arc_easy", "--model", "tiny-random-llama", "--precision", "fp32",
       "--limit-train", "4", "--limit-eval", "4", "--set", "epochs=1"]


def _custom_dir(tmp, train_text=None, name="c"):
    d = tmp / name
    d.mkdir(exist_ok=True)
    ok = json.dumps({"question": "q?", "choices": ["a", "b"], "answer": 0}) + "\n"
    (d / "train.jsonl").write_bytes(train_text if isinstance(train_text, bytes) else (train_text or ok).encode())
    (d / "test.jsonl").write_text(json.dumps({"question": "t?", "choices": ["a", "b"], "answer": 1}) + "\n")
    return f"custom:{d}"


def _custom_task(tmp, train_text):
    return ["run", "--method", "lora", "--task", _custom_dir(tmp, train_text), "--model", "tiny-random-llama",
            "--set", "epochs=1"]


def _damaged_adapter(tmp, lora_adapter, what):
    import shutil
    bad = tmp / f"adapter-{what}"
    shutil.copytree(lora_adapter, bad)
    weights = bad / "adapter_model.safetensors"
    if what == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif what == "random":
        weights.write_bytes(os.urandom(4096))
    else:
        (bad / "adapter_config.json").write_text("{not json")
    return ["run", "--method", "temperature", "--task", "arc_easy", "--model", "tiny-random-llama", "--adapter",
            str(bad), "--limit-train", "4", "--limit-eval", "4"]


def _sweep_file(tmp, seeds):
    import yaml
    spec = {**load_spec("tiny"), "seeds": seeds}
    f = tmp / "s.yaml"
    f.write_text(yaml.safe_dump(spec))
    return ["sweep", str(f)]


BAD_TABLE = {
    "lr nan": (lambda t, a: RUN + ["--set", "lr=nan"], "finite"),
    "lr inf": (lambda t, a: RUN + ["--set", "lr=inf"], "finite"),
    "weight_decay nan": (lambda t, a: RUN + ["--set", "weight_decay=nan"], "finite"),
    "r absurd": (lambda t, a: RUN + ["--set", "r=100000000"], "exceeds"),
    "seed -1": (lambda t, a: RUN + ["--seed", "-1"], "--seed"),
    "max_steps -1": (lambda t, a: RUN + ["--set", "max_steps=-1"], "max_steps"),
    "alpha -16": (lambda t, a: RUN + ["--set", "alpha=-16"], "alpha"),
    "ood empty item": (lambda t, a: RUN + ["--ood", ","], "empty item"),
    "samples 0": (lambda t, a: RUN + ["--samples", "0"], "--samples 0"),
    "quant on tiny": (lambda t, a: RUN + ["--quant", "8bit"], "quant"),
    "empty choice": (lambda t, a: _custom_task(t, json.dumps({"question": "q", "choices": ["", "b"], "answer": 0})),
                     "non-empty"),
    "non-utf8 custom": (lambda t, a: _custom_task(t, b'{"question": "\xff\xfe"}\n'), "utf-8"),
    "huge line": (lambda t, a: _custom_task(t, json.dumps({"question": "x" * 200_000, "choices": ["a", "b"],
                                                           "answer": 0})), "characters"),
    "directory as file": (lambda t, a: ["run", "--method", "lora", "--task", "arc_easy", "--ood",
                                        f"custom:{t}", "--model", "tiny-random-llama"], "test.jsonl"),
    "truncated weights": (lambda t, a: _damaged_adapter(t, a, "truncated"), "damaged"),
    "random weights": (lambda t, a: _damaged_adapter(t, a, "random"), "damaged"),
    "bad adapter_config": (lambda t, a: _damaged_adapter(t, a, "config"), "not valid json"),
    "empty model dir": (lambda t, a: ["run", "--method", "lora", "--task", "arc_easy", "--model",
                                      str((t / "empty").mkdir() or t / "empty")], "cannot load model"),
    "results is a file": (lambda t, a: RUN + ["--results", str((t / "f").write_text("x") and t / "f")], "is a file"),
    "sweep seeds string": (lambda t, a: _sweep_file(t, "0,1"), "seeds"),
    "sweep seeds empty": (lambda t, a: _sweep_file(t, []), "seeds"),
    "sweep --seeds 0,x": (lambda t, a: ["sweep", "--methods", "lora", "--tasks", "arc_easy", "--seeds", "0,x"], "seeds"),
    "sweep --workers -1": (lambda t, a: ["sweep", "tiny", "--workers", "-1"], "--workers"),
    "sweep --workers 0 without storage": (lambda t, a: ["sweep", "tiny", "--workers", "0"], "--storage"),
    "worker of no study": (lambda t, a: ["worker", "--study", "sweep-nope"], "storage"),
    "tune --ece-max -0.5": (lambda t, a: ["tune", "--method", "lora", "--task", "arc_easy", "--trials", "1",
                                          "--model", "tiny-random-llama", "--ece-max", "-0.5"], "ece-max"),
    "report --bootstrap -5": (lambda t, a: ["report", "--bootstrap", "-5"], "bootstrap"),
}


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory, data_dir):
    from tests.helpers import build
    d = tmp_path_factory.mktemp("lora-adapter")
    build("lora", data_dir, d).save(d / "adapter")
    return d / "adapter"


@pytest.mark.parametrize("case", list(BAD_TABLE))
def test_bad_input_table(case, tmp_path, data_dir, lora_adapter):
    make, needle = BAD_TABLE[case]
    args = make(tmp_path, lora_adapter)
    results = tmp_path / "results"
    if "--results" in args:  # the case is about the results path itself
        i = args.index("--results")
        results, args = Path(args[i + 1]), args[:i] + args[i + 2:]
        p = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), *args, "--results", str(results)],
                           capture_output=True, text=True, env=_env(data_dir), timeout=300)
        assert p.returncode == 2 and needle in p.stderr and results.read_text() == "x", p.stderr
        return
    assert_bad_input(cli(*args, results=results, data_dir=data_dir), needle, results)


def test_ctrl_c_prints_one_line(tmp_path, data_dir):
    import signal
    import threading
    # so many epochs that the run cannot end by itself; SIGINT goes once training has begun (its progress bar
    # shows), not after a fixed sleep, which a fast machine outran
    args = [sys.executable, str(ROOT / "benchmark.py"), *RUN[:-2], "--set", "epochs=1000000", "--results", str(tmp_path)]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(data_dir))
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: p.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.time() + 240
    while "lora:" not in "".join(chunks) and p.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert p.poll() is None, "".join(chunks)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=120)
    reader.join(timeout=10)
    err = "".join(chunks)
    assert p.returncode == 130 and "Traceback" not in err and err.strip().endswith("interrupted"), err
