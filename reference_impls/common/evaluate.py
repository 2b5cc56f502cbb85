"""Evaluation of a (compressed) model against its uncompressed self.

Causal LM: perplexity = exp(mean next-token NLL) over fixed non-overlapping windows of the held-out
stream, every position after the first of each window predicted (the protocol of the GPTQ paper's
WikiText2 numbers, on our held-out modules).

Encoder: mean-pooled, L2-normalised sentence embeddings (all-MiniLM-L6-v2's pooling). `cosine` is
the mean cosine similarity between each text's compressed and uncompressed embedding;
`retrieval_agreement` the mean overlap |top-k(compressed) ∩ top-k(uncompressed)| / k of the
documents that each query retrieves.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Tokens per forward batch on CPU: 16 windows of 256 was the fastest of 8/16/32 on 2 cores (larger
# batches spill the caches without using the cores better); a GPU takes far more.
CPU_BATCH_TOKENS = 4096
GPU_BATCH_TOKENS = 32768
EVAL_DTYPES = ("auto", "float32", "bfloat16")
BF16_TOLERANCE = 1e-3  # bf16 evaluation is used only when it moves the reference perplexity less


def eval_batch_size(seq_len: int, device: torch.device | str = "cpu") -> int:
    tokens = GPU_BATCH_TOKENS if torch.device(device).type == "cuda" else CPU_BATCH_TOKENS
    return max(1, tokens // seq_len)


def _split_head(model):
    """(base, lm_head) when the model computes logits = lm_head(base(x)[0]), else None.

    Scoring from hidden states one window at a time never holds the (batch, seq, vocab) logits, whose
    memory traffic costs more than the head's matmul on CPU. Architectures that rescale or cap logits
    after the head use the model's own forward.
    """
    cfg = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = getattr(model, "base_model", None)
    if head is None or base is None or base is model or not isinstance(head, torch.nn.Linear):
        return None
    if any(getattr(cfg, a, None) for a in ("final_logit_softcapping", "logit_scale", "output_multiplier")):
        return None
    return base, head


def _nll_full(model, x: torch.Tensor) -> torch.Tensor:
    """Per-window NLL sums (b,) from the model's own logits."""
    logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()  # (b, seq-1, vocab)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
    return nll.view(x.shape[0], -1).double().sum(1)


def _nll_split(base, head, x: torch.Tensor) -> torch.Tensor:
    """Per-window NLL sums (b,) through the head one window at a time."""
    hidden = base(input_ids=x, use_cache=False)[0][:, :-1]  # (b, seq-1, hidden)
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for b in range(x.shape[0]):
        logits = head(hidden[b]).float()  # (seq-1, vocab)
        out[b] = F.cross_entropy(logits, x[b, 1:], reduction="sum").double()
    return out


def _batch_workers(device: torch.device, n_batches: int) -> int:
    """Threads that each score whole batches with one intra-op thread (CPU only).

    On 2 cores, two batches side by side with single-threaded kernels beat one batch on 2 OpenMP
    threads (15-22 s vs 23-26 s for the 565 held-out windows at load ~2): no thread waits at an OpenMP
    barrier for a partner the scheduler took away (reference_impls/common/PERFORMANCE.md).
    """
    if device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), n_batches))


def window_nll(model, windows: torch.Tensor, *, batch_size: int | None = None,
               dtype: torch.dtype | None = None, workers: int | None = None) -> torch.Tensor:
    """Summed next-token NLL of each window (n_windows,), float64; every position after the first.

    `dtype` = torch.bfloat16 runs under bf16 autocast (matmuls in bf16, softmax and losses in
    float32); None keeps the model's own precision. On CPU the batches are shared among `workers`
    threads (default: torch's thread count), each running its kernels single-threaded; the windows and
    their order are the same whatever the split (the NLLs equal the one-batch-at-a-time pass bit for bit
    on the machine measured; tests/test_eval_cache.py allows 1e-6).
    """
    device = next(model.parameters()).device
    batch_size = batch_size or eval_batch_size(windows.shape[1], device)
    batches = [windows[i : i + batch_size] for i in range(0, windows.shape[0], batch_size)]
    split = _split_head(model)
    if split is not None:
        # the shortcut must score a window exactly as the model's own forward does
        x = windows[:1].to(device)
        with torch.inference_mode(), _autocast(device, dtype):
            if not math.isclose(_nll_split(*split, x).item(), _nll_full(model, x).item(), rel_tol=1e-4):
                split = None

    def score(batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(device)  # (b, seq)
        with torch.inference_mode(), _autocast(device, dtype):  # both are per thread
            return (_nll_split(*split, x) if split else _nll_full(model, x)).cpu()

    workers = workers or _batch_workers(device, len(batches))
    if workers == 1:
        return torch.cat([score(b) for b in batches])
    threads = torch.get_num_threads()

    def score_single_threaded(batch: torch.Tensor) -> torch.Tensor:
        torch.set_num_threads(1)
        return score(batch)

    try:
        with ThreadPoolExecutor(workers) as pool:
            return torch.cat(list(pool.map(score_single_threaded, batches)))
    finally:
        torch.set_num_threads(threads)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def perplexity(model, windows: torch.Tensor, *, batch_size: int | None = None,
               dtype: torch.dtype | None = None) -> float:
    """exp of the mean NLL over all predicted positions of `windows` (n_windows, seq_len)."""
    nll = window_nll(model, windows, batch_size=batch_size, dtype=dtype)
    return math.exp(nll.sum().item() / (windows.shape[0] * (windows.shape[1] - 1)))


def native_bf16(device: torch.device | str) -> bool:
    """Whether bf16 matmuls are native (not emulated) on `device`."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    from reference_impls.common.hardware import native_bf16 as cpu_bf16

    return device.type == "cpu" and cpu_bf16()


@dataclass
class CausalReference:
    """The uncompressed model's held-out perplexity, at the precision every later evaluation uses."""

    windows: torch.Tensor  # (n_windows, seq_len)
    perplexity: float  # at `dtype`
    dtype: torch.dtype | None  # autocast dtype of the evaluations (None: the model's own, float32)
    perplexity_float32: float
    cache_hit: bool

    @property
    def dtype_name(self) -> str:
        return "bfloat16" if self.dtype == torch.bfloat16 else "float32"


def check_eval_dtype(eval_dtype: str) -> None:
    if eval_dtype not in EVAL_DTYPES:
        raise ValueError(f"--eval-dtype must be one of {', '.join(EVAL_DTYPES)}, got {eval_dtype!r}")


def causal_reference(model, windows: torch.Tensor, *, eval_dtype: str = "float32", seed: int = 0,
                     tasks: tuple[str, ...] = ()) -> CausalReference:
    """Reference perplexity, from the disk cache (reference_impls.common.eval_cache) when it has it.

    `eval_dtype` "auto" evaluates under bf16 autocast where bf16 is native and the reference's bf16
    perplexity is within `BF16_TOLERANCE` (relative) of its float32 one (both cached), else float32.
    """
    from reference_impls.common import eval_cache

    check_eval_dtype(eval_dtype)
    device = next(model.parameters()).device
    batch = eval_batch_size(windows.shape[1], device)
    base = {"kind": "perplexity", "model": eval_cache.model_hash(model),
            "windows": eval_cache.tensor_hash([windows]), "n_windows": windows.shape[0], "seed": seed,
            "batch": batch, "device": device.type, "torch": torch.__version__, "tasks": sorted(tasks)}
    shapes = {"nll": (windows.shape[0],)}
    tokens = windows.shape[0] * (windows.shape[1] - 1)

    def ppl(dtype: torch.dtype | None) -> tuple[float, bool]:
        name = "bfloat16" if dtype is not None else "float32"
        entry, hit = eval_cache.cached({**base, "dtype": name}, shapes, lambda: {
            "nll": window_nll(model, windows, batch_size=batch, dtype=dtype)})
        return math.exp(entry["nll"].sum().item() / tokens), hit

    p32, hit32 = ppl(None)
    use_bf16 = eval_dtype == "bfloat16" or (eval_dtype == "auto" and native_bf16(device))
    if use_bf16:
        p16, hit16 = ppl(torch.bfloat16)
        if eval_dtype == "bfloat16" or abs(p16 / p32 - 1) <= BF16_TOLERANCE:
            return CausalReference(windows, p16, torch.bfloat16, p32, hit32 and hit16)
    return CausalReference(windows, p32, None, p32, hit32)


@torch.inference_mode()
def embed(model, tokenizer, texts: list[str], *, batch_size: int = 32, max_length: int = 128) -> torch.Tensor:
    """Mean-pooled, normalised embeddings (n_texts, hidden), in float32 on CPU.

    128 tokens is the length all-MiniLM-L6-v2 was trained at; texts are batched by length so that
    padding costs little, and returned in their original order.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = []
    for i in range(0, len(texts), batch_size):
        chunk = [texts[j] for j in order[i : i + batch_size]]
        enc = tokenizer(
            chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        hidden = model(**enc).last_hidden_state.float()  # (b, seq, hidden)
        mask = enc["attention_mask"].unsqueeze(-1).float()  # (b, seq, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(F.normalize(pooled, dim=-1).cpu())
    emb = torch.cat(out)
    return emb[torch.argsort(torch.tensor(order))]  # back to the order of `texts`


@dataclass
class EncoderReference:
    """Uncompressed embeddings of the evaluation documents and queries."""

    docs: list[str]
    queries: list[str]
    doc_emb: torch.Tensor  # (n_docs, hidden)
    query_emb: torch.Tensor  # (n_queries, hidden)
    n_records: int


def top_k(query_emb: torch.Tensor, doc_emb: torch.Tensor, k: int) -> torch.Tensor:
    return (query_emb @ doc_emb.t()).topk(min(k, doc_emb.shape[0]), dim=1).indices  # (n_queries, k)


def encoder_fidelity(
    ref: EncoderReference, doc_emb: torch.Tensor, query_emb: torch.Tensor, k: int = 10
) -> dict:
    cos = torch.cat([(ref.doc_emb * doc_emb).sum(-1), (ref.query_emb * query_emb).sum(-1)]).mean().item()
    ref_top, new_top = top_k(ref.query_emb, ref.doc_emb, k), top_k(query_emb, doc_emb, k)
    overlap = [
        len(set(a.tolist()) & set(b.tolist())) / ref_top.shape[1]
        for a, b in zip(ref_top, new_top, strict=True)
    ]
    return {"cosine": cos, "retrieval_agreement": sum(overlap) / len(overlap)}


def encoder_reference(loaded, papers_dir="papers") -> EncoderReference:
    from reference_impls.common import eval_cache
    from reference_impls.common.data import encoder_eval_texts

    docs, queries, n_records = encoder_eval_texts(papers_dir)
    model = loaded.model
    hidden = int(model.config.hidden_size)
    settings = {"kind": "encoder", "model": eval_cache.model_hash(model), "docs": eval_cache.text_hash(docs),
                "queries": eval_cache.text_hash(queries), "batch": 32, "max_length": 128,
                "device": next(model.parameters()).device.type, "torch": torch.__version__}
    entry, _ = eval_cache.cached(
        settings, {"doc_emb": (len(docs), hidden), "query_emb": (len(queries), hidden)},
        lambda: {"doc_emb": embed(model, loaded.tokenizer, docs),
                 "query_emb": embed(model, loaded.tokenizer, queries)})
    return EncoderReference(docs, queries, entry["doc_emb"], entry["query_emb"], n_records)


def evaluate_encoder(loaded, ref: EncoderReference) -> dict:
    doc_emb = embed(loaded.model, loaded.tokenizer, ref.docs)
    query_emb = embed(loaded.model, loaded.tokenizer, ref.queries)
    metrics = encoder_fidelity(ref, doc_emb, query_emb)
    metrics.update(n_docs=len(ref.docs), n_catalog_records=ref.n_records, n_queries=len(ref.queries))
    return metrics
