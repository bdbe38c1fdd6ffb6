"""Issue 15 (command line): every option documented with its default, `list methods NAME`, the sweep's CLI
form with settings, quiet runs."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from tests.helpers import ROOT, cli


def _parser():
    sys.path.insert(0, str(ROOT))
    import benchmark
    captured = {}
    real = benchmark.Parser.parse_args

    def grab(self, argv=None, namespace=None):
        captured["ap"] = self
        raise SystemExit(0)
    benchmark.Parser.parse_args = grab
    try:
        with pytest.raises(SystemExit):
            benchmark.main(["list", "methods"])
    finally:
        benchmark.Parser.parse_args = real
    return captured["ap"]


def test_every_option_of_every_command_has_help():
    ap = _parser()
    subs = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in subs.choices.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"`{name} {'/'.join(action.option_strings) or action.dest}` has no help"
    assert "tiny" in next(c.help for c in subs._choices_actions if c.dest == "sweep")


def test_help_shows_defaults():
    p = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "run", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "(default: 0)" in p.stdout and "(default: 8)" in p.stdout  # --seed, batch


def test_list_one_method_prints_its_settings_with_types_defaults_and_help():
    p = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "list", "methods", "blob"],
                       capture_output=True, text=True)
    assert p.returncode == 0
    kl = next(line for line in p.stdout.splitlines() if line.strip().startswith("kl_lr"))
    assert "float" in kl and "0.01" in kl and "SGD" in kl
    lr = next(line for line in p.stdout.splitlines() if line.strip().startswith("lr "))
    assert "learning rate" in lr
    p = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "list", "methods", "zero_shot"],
                       capture_output=True, text=True)
    assert "settings: none" in p.stdout and "nothing fitted" in p.stdout


def test_unknown_setting_lists_the_valid_ones_with_types_and_defaults(tmp_path, data_dir):
    p = cli("run", "--method", "blob", "--task", "arc_easy", "--set", "kl_rate=1", results=tmp_path, data_dir=data_dir)
    assert p.returncode == 2 and "kl_lr (float, default 0.01)" in p.stderr and "did you mean 'kl_lr'" in p.stderr.lower()


def test_sweep_cli_form_takes_settings_and_precision(tmp_path, data_dir):
    p = cli("sweep", "--methods", "lora,tfb", "--tasks", "arc_easy", "--model", "tiny-random-llama", "--precision",
            "fp32", "--set", "epochs=1", "--set", "anchor_size=8", "--base-set", "epochs=1", "--limit-train", "8",
            "--limit-eval", "6", "--dry-run", results=tmp_path, data_dir=data_dir)
    assert p.returncode == 0 and "2 cells" in p.stdout, p.stderr
    p = cli("sweep", "--methods", "lora", "--tasks", "arc_easy", "--set", "anchor_size=8", "--dry-run",
            results=tmp_path, data_dir=data_dir)
    assert p.returncode == 2 and "anchor_size" in p.stderr


def test_a_run_is_quiet(tmp_path, data_dir):
    p = cli("run", "--method", "zero_shot", "--task", "arc_easy", "--model", "tiny-random-llama", "--precision",
            "fp32", "--limit-eval", "4", results=tmp_path, data_dir=data_dir)
    assert p.returncode == 0, p.stderr
    assert "gemm_4bit_forward" not in p.stderr and "FutureWarning" not in p.stderr
