"""Tasks beyond perplexity: what compression breaks that perplexity can hide (LLM-Kick, arXiv 2310.01382).

Every task is built offline and deterministically (seeded) from the committed corpus split and the
catalog, and scored against ground truth, not against the uncompressed model, so the uncompressed
model's own score is a baseline the compressed one is compared with.

Causal LM (one teacher-forced forward per item; greedy decoding reproduces a span exactly iff every
one of its tokens is the arg-max given the true prefix, so "exact match under greedy decoding" needs no
token-by-token generation):
- `code_line`: exact match of each line of held-out functions given the function so far (docstring
  lines and the signature excluded);
- `code_identifier`: exact match of identifiers that already occurred earlier in the same function;
- `knowledge_recall`: closed-book, 4-way: after `import M` and `M.`, the log-likelihood of an attribute
  the training split uses with M at least `MIN_FACT_COUNT` times against three frequent attributes of
  other modules that it never uses with M (chance 0.25);
- `context_recall`: in-context associative recall / copying: novel identifiers (random syllables, absent
  from the corpus) are assigned early, held-out code follows, and one of them is used late; score =
  tokens of the re-used identifier after its first token predicted exactly (what induction heads do),
  per distance bucket in `detail`;
- `long_context`: next-token top-1 accuracy at positions 128-255 of held-out windows; the accuracy per
  32-position bucket (0-256) is in `detail`, so a method that degrades late in the window shows it.

Encoder:
- `paper_retrieval`: each catalog record's method description (held out from the indexed text) is a
  query for the record's title + problem statement; mean reciprocal rank over all records;
- `sts_spearman`: Spearman correlation between embedding cosine and a graded relatedness of record
  pairs from the catalog's own structure (same taxonomy path 2, shared theme 1, plus tag Jaccard).
"""

from __future__ import annotations

import ast
import random
import re
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from reference_impls.common import corpus

SEED = 0
N_FUNCTIONS = 48
MIN_FUNCTION_TOKENS, MAX_TOKENS = 48, 256
MIN_FACT_COUNT = 10
FACTS_PER_MODULE = 4
N_CHOICES = 4
N_RECALL = 64
N_LONG_WINDOWS = 16
POSITION_BUCKET = 32
CAUSAL_TASKS = ("code_line", "code_identifier", "knowledge_recall", "context_recall", "long_context")
ENCODER_TASKS = ("paper_retrieval", "sts_spearman")
CHANCE = {"code_line": 0.0, "code_identifier": 0.0, "knowledge_recall": 1 / N_CHOICES,
          "context_recall": 0.0, "long_context": 0.0, "paper_retrieval": None, "sts_spearman": 0.0}


@dataclass
class Scored:
    """Token rows to run and, per item, the positions (row, token indices) whose prediction it scores."""

    ids: torch.Tensor  # (n_rows, seq) right-padded
    spans: list[tuple[int, list[int]]] = field(default_factory=list)
    tags: list = field(default_factory=list)  # per span: a grouping label (e.g. distance bucket)


@lru_cache(maxsize=1)
def _heldout_texts() -> tuple[str, ...]:
    return tuple(corpus.split_texts("heldout"))  # one walk of the standard library per process


def _encode(tokenizer, text: str):
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return enc["input_ids"], enc["offset_mapping"]


def _tokens_in(offsets, start: int, end: int) -> list[int]:
    """Indices of tokens overlapping characters [start, end), excluding token 0 (nothing predicts it)."""
    return [j for j, (a, b) in enumerate(offsets) if j > 0 and a < end and b > start]


def _pad(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long)


# ---------------------------------------------------------------- causal: code completion
def _functions(texts: list[str]) -> list[str]:
    """Source of every function (methods dedented), with the line numbers of its docstring removed."""
    out = []
    for text in texts:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        lines = text.splitlines(keepends=True)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
                out.append(textwrap.dedent("".join(lines[node.lineno - 1 : node.end_lineno])))
    return out


def _body_lines(src: str) -> tuple[list[tuple[int, int]], set[int]]:
    """Character spans of the scored lines (content after indentation, no newline) and docstring lines."""
    node = ast.parse(src).body[0]
    doc_lines: set[int] = set()
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
        doc_lines = set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    spans, pos = [], 0
    for lineno, line in enumerate(src.splitlines(keepends=True), start=1):
        content = line.strip()
        scored = lineno >= first.lineno and lineno not in doc_lines
        if scored and content and not content.startswith("#"):
            spans.append((pos + len(line) - len(line.lstrip()), pos + len(line.rstrip())))
        pos += len(line)
    return spans, doc_lines


def _identifiers(src: str, body_start: int) -> list[tuple[int, int]]:
    """Character spans of names in the body that already occurred earlier in the function."""
    seen: set[str] = set()
    spans = []
    keywords = {"def", "return", "if", "else", "elif", "for", "in", "not", "and", "or", "is", "None", "True",
                "False", "self", "while", "try", "except", "with", "as", "import", "from", "raise", "pass",
                "lambda", "yield", "class", "break", "continue", "finally", "del", "global", "assert"}
    for m in re.finditer(r"[A-Za-z_][A-Za-z0-9_]*", src):
        name = m.group()
        if m.start() >= body_start and name in seen and name not in keywords and len(name) > 2:
            spans.append((m.start(), m.end()))
        seen.add(name)
    return spans


def _code_items(tokenizer, seed: int) -> tuple[Scored, Scored]:
    sources = sorted(set(_functions(_heldout_texts())))
    enc = tokenizer(sources, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    candidates = [(src, ids, offsets)
                  for src, ids, offsets in zip(sources, enc["input_ids"], enc["offset_mapping"], strict=True)
                  if MIN_FUNCTION_TOKENS <= len(ids) <= MAX_TOKENS]
    chosen = random.Random(seed).sample(candidates, min(N_FUNCTIONS, len(candidates)))
    lines, names = Scored(torch.empty(0)), Scored(torch.empty(0))
    rows = []
    for r, (src, ids, offsets) in enumerate(chosen):
        rows.append(ids)
        spans, _ = _body_lines(src)
        for a, b in spans:
            if toks := _tokens_in(offsets, a, b):
                lines.spans.append((r, toks))
        body_start = spans[0][0] if spans else len(src)
        for a, b in _identifiers(src, body_start):
            if toks := _tokens_in(offsets, a, b):
                names.spans.append((r, toks))
    lines.ids = names.ids = _pad(rows, tokenizer.eos_token_id or 0)
    return lines, names


# ---------------------------------------------------------------- causal: knowledge recall
IMPORT_RE = re.compile(r"^import ([\w.]+(?:, *[\w.]+)*) *$", re.M)


@lru_cache(maxsize=1)
def module_facts() -> dict[str, Counter]:
    """How often the training split writes `M.attr` in a file that does `import M` (M may be dotted,
    and `os.path.join` counts for both `os` → `path` and `os.path` → `join`)."""
    counts: dict[str, Counter] = {}
    for text in corpus.split_texts("train"):
        imported = {name.strip() for m in IMPORT_RE.finditer(text) for name in m.group(1).split(",")}
        for module in imported:
            for chain in re.findall(rf"(?<![\w.]){re.escape(module)}((?:\.[A-Za-z_]\w*)+)", text):
                parts = [module, *chain[1:].split(".")]
                for i in range(1, len(parts)):
                    counts.setdefault(".".join(parts[:i]), Counter())[parts[i]] += 1
    return counts


def _knowledge_items(tokenizer, seed: int) -> tuple[torch.Tensor, list[tuple[int, list[int]]], list[int]]:
    """Rows prompt+candidate; per (item, candidate) the candidate's token positions; the answer index."""
    facts = module_facts()
    frequent = sorted((m, a) for m, c in facts.items() for a, n in c.most_common(FACTS_PER_MODULE)
                      if n >= MIN_FACT_COUNT)
    rng = random.Random(seed)
    rows, spans, answers = [], [], []
    for module, attr in frequent:
        pool = sorted({a for m, a in frequent if m != module and a not in facts[module]})
        if len(pool) < N_CHOICES - 1:
            continue
        choices = [attr, *rng.sample(pool, N_CHOICES - 1)]
        rng.shuffle(choices)
        prompt = f"import {module}\n\n\n{module}."
        p_ids, _ = _encode(tokenizer, prompt)
        for cand in choices:
            ids, _ = _encode(tokenizer, prompt + cand)
            if ids[: len(p_ids)] != p_ids:  # a merge across the boundary: skip such an item
                break
            spans.append((len(rows), list(range(len(p_ids), len(ids)))))
            rows.append(ids)
        else:
            answers.append(choices.index(attr))
            continue
        del rows[len(rows) - len(spans) % N_CHOICES :], spans[len(spans) - len(spans) % N_CHOICES :]
    return _pad(rows, tokenizer.eos_token_id or 0), spans, answers


# ---------------------------------------------------------------- causal: in-context recall, long context
# Ordinary identifier words; three of them joined form a name the corpus does not contain, so only the
# context can tell which combination follows the first word.
WORDS = ("buffer", "count", "path", "item", "value", "token", "node", "index", "name", "data", "size", "line",
         "state", "queue", "entry", "block", "frame", "mode", "flag", "cache", "limit", "offset", "prefix",
         "record", "header", "source", "target", "window", "stamp", "table")
RECALL_DEFS = 3
DISTANCE_BUCKETS = (0, 64, 128, 192, 256)


def _novel_name(rng: random.Random, taken: set[str]) -> str:
    """Three distinct words; the first differs from the other names' first words."""
    first = rng.choice([w for w in WORDS if w not in taken])
    taken.add(first)
    return "_".join([first, *rng.sample([w for w in WORDS if w != first], 2)])


def _recall_items(tokenizer, seed: int, *, control: bool = False) -> Scored:
    """Novel names assigned at the top, held-out code, then one of them used again: score its copy.

    `control`: the same rows with the used name's assignment replaced by another novel name, so the
    later words of the used name appear nowhere before it (what a model gets right without recall)."""
    rng = random.Random(seed)
    lines = [ln for text in _heldout_texts() for ln in text.splitlines(keepends=True)]
    lengths = [len(ids) for ids in tokenizer(lines, add_special_tokens=False, verbose=False)["input_ids"]]
    items = Scored(torch.empty(0))
    rows = []
    for _ in range(N_RECALL):
        taken: set[str] = set()
        names = [_novel_name(rng, taken) for _ in range(RECALL_DEFS + 1)]
        pick = rng.randrange(RECALL_DEFS)
        used, shown = names[pick], names[:RECALL_DEFS]
        if control:
            shown[pick] = names[-1]
        head = "".join(f"{n} = {rng.randrange(100, 999)}\n" for n in shown)
        target_distance = rng.randrange(8, MAX_TOKENS - 48)
        start = rng.randrange(len(lines) - 400)
        filler, n_filler = "", 0
        for line, length in zip(lines[start:], lengths[start:], strict=True):
            n_filler += length  # about the joint count: lines tokenize apart
            if n_filler > target_distance:
                break
            filler += line
        text = head + filler + f"\nresult = {used}\n"
        ids, offsets = _encode(tokenizer, text)
        name_start = text.rindex(used)
        toks = _tokens_in(offsets, name_start, name_start + len(used))
        # The first token chooses which name; the rest is a copy. Separators ("_") are predictable
        # without the context, so only the tokens of the later words are scored.
        words = [j for j in toks[1:] if tokenizer.decode([ids[j]]).strip("_ ")]
        if len(ids) > MAX_TOKENS or not words:
            continue
        defined = head.index(shown[pick])
        items.spans.append((len(rows), words))
        first = next(j for j, (_, b) in enumerate(offsets) if b > defined)
        items.tags.append(toks[0] - first)  # tokens between the two occurrences
        rows.append(ids)
    items.ids = _pad(rows, tokenizer.eos_token_id or 0)
    return items


def _long_windows(tokenizer, seq_len: int) -> torch.Tensor:
    """`N_LONG_WINDOWS` windows spread evenly over the held-out stream: (n, seq_len)."""
    from reference_impls.common.data import token_stream

    stream = token_stream(tokenizer, list(_heldout_texts()))
    n = stream.numel() // seq_len
    picks = torch.linspace(0, n - 1, N_LONG_WINDOWS).long()
    return stream[: n * seq_len].view(n, seq_len)[picks]


# ---------------------------------------------------------------- causal: the suite
@dataclass
class CausalSuite:
    code_lines: Scored
    code_names: Scored
    knowledge_ids: torch.Tensor
    knowledge_spans: list[tuple[int, list[int]]]
    knowledge_answers: list[int]
    recall: Scored
    long_windows: torch.Tensor


_SUITES: dict[tuple, CausalSuite] = {}


def causal_suite(tokenizer, *, seq_len: int = MAX_TOKENS, seed: int = SEED) -> CausalSuite:
    """The causal tasks for a tokenizer, built once per process (a few seconds: corpus statistics)."""
    key = (tokenizer.name_or_path, len(tokenizer), seq_len, seed)
    if key not in _SUITES:
        lines, names = _code_items(tokenizer, seed)
        k_ids, k_spans, k_answers = _knowledge_items(tokenizer, seed)
        _SUITES[key] = CausalSuite(lines, names, k_ids, k_spans, k_answers, _recall_items(tokenizer, seed),
                                   _long_windows(tokenizer, min(seq_len, MAX_TOKENS)))
    return _SUITES[key]


@torch.no_grad()
def _predictions(model, ids: torch.Tensor, *, logp: bool = False, batch_size: int = 16) -> torch.Tensor:
    """(n, seq-1): whether the arg-max is the next token, or (`logp`) log p(next token)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, ids.shape[0], batch_size):
        x = ids[i : i + batch_size].to(device)  # (b, seq); right padding never reaches a scored position
        logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()  # (b, seq-1, vocab)
        target = x[:, 1:]
        if logp:
            out.append(F.log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1).cpu())
        else:
            out.append((logits.argmax(-1) == target).cpu())
    return torch.cat(out)


def _exact(correct: torch.Tensor, spans: list[tuple[int, list[int]]]) -> list[bool]:
    return [bool(correct[r, [j - 1 for j in toks]].all()) for r, toks in spans]


def _token_accuracy(correct: torch.Tensor, spans: list[tuple[int, list[int]]]) -> list[float]:
    return [float(correct[r, [j - 1 for j in toks]].float().mean()) for r, toks in spans]


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def run_causal(model, tokenizer, *, seq_len: int = MAX_TOKENS) -> tuple[dict, dict]:
    """(scores per task, detail: per-position and per-distance curves, item counts)."""
    suite = causal_suite(tokenizer, seq_len=seq_len)
    code_ok = _predictions(model, suite.code_lines.ids)
    k_logp = _predictions(model, suite.knowledge_ids, logp=True)
    recall_ok = _predictions(model, suite.recall.ids)
    long_ok = _predictions(model, suite.long_windows)

    cand = torch.tensor([float(k_logp[r, [j - 1 for j in toks]].sum()) for r, toks in suite.knowledge_spans])
    picked = cand.view(-1, N_CHOICES).argmax(1).tolist()
    recalled = _token_accuracy(recall_ok, suite.recall.spans)
    by_distance = {
        f"{a}-{b}": _mean(ok for ok, d in zip(recalled, suite.recall.tags, strict=True) if a <= d < b)
        for a, b in zip(DISTANCE_BUCKETS, DISTANCE_BUCKETS[1:], strict=False)
    }
    pos_acc = long_ok.float().mean(0)  # (seq-1,): position p predicts token p+1
    by_position = [float(pos_acc[a : a + POSITION_BUCKET].mean())
                   for a in range(0, pos_acc.numel(), POSITION_BUCKET)]
    late = pos_acc.numel() // 2
    scores = {
        "code_line": _mean(_exact(code_ok, suite.code_lines.spans)),
        "code_identifier": _mean(_exact(code_ok, suite.code_names.spans)),
        "knowledge_recall": _mean(p == a for p, a in zip(picked, suite.knowledge_answers, strict=True)),
        "context_recall": _mean(recalled),
        "long_context": float(pos_acc[late:].mean()),
    }
    detail = {"context_recall_by_distance": by_distance, "accuracy_by_position": by_position,
              "position_bucket": POSITION_BUCKET,
              "n_items": {"code_line": len(suite.code_lines.spans),
                          "code_identifier": len(suite.code_names.spans),
                          "knowledge_recall": len(suite.knowledge_answers), "context_recall": len(recalled),
                          "long_context": int(suite.long_windows.shape[0])}}
    return scores, detail


# ---------------------------------------------------------------- encoder
N_STS_PAIRS = 400


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s+", " ".join(text.split()), maxsplit=1)[0]


@lru_cache(maxsize=4)
def encoder_items(papers_dir: str, seed: int = SEED
                  ) -> tuple[list[str], list[str], list[tuple[int, int]], list[float]]:
    """(documents, queries, STS pairs, graded relatedness): document i = title + problem of record i,
    query i = the first sentence of its method description (text the document does not contain)."""
    from catalog.load import load_records

    records = [r for r in load_records(Path(papers_dir)) if r.summary and r.summary.method]
    docs = [f"{r.title}. {r.summary.problem}" for r in records]
    queries = [_first_sentence(r.summary.method) for r in records]
    rng = random.Random(seed)
    pairs = sorted({tuple(sorted(rng.sample(range(len(records)), 2))) for _ in range(N_STS_PAIRS)})
    gold = []
    for i, j in pairs:
        a, b = records[i], records[j]
        tags_a, tags_b = set(a.tags), set(b.tags)
        jaccard = len(tags_a & tags_b) / max(1, len(tags_a | tags_b))
        gold.append(2.0 * (a.taxonomy == b.taxonomy) + float(bool(set(a.themes) & set(b.themes))) + jaccard)
    return docs, queries, pairs, gold


def _spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def run_encoder(model, tokenizer, papers_dir: str | Path = "papers") -> tuple[dict, dict]:
    """(scores, detail) for an encoder: paraphrase retrieval MRR and STS rank agreement."""
    from reference_impls.common.evaluate import embed

    docs, queries, pairs, gold = encoder_items(str(papers_dir))
    d, q = embed(model, tokenizer, docs), embed(model, tokenizer, queries)  # (n, hidden), normalised
    sims = q @ d.t()  # (n_queries, n_docs)
    ranks = (sims > sims.diag().unsqueeze(1)).sum(1) + 1  # rank of each query's own record
    cos = [float(d[i] @ d[j]) for i, j in pairs]
    scores = {"paper_retrieval": float((1.0 / ranks.float()).mean()), "sts_spearman": _spearman(cos, gold)}
    detail = {"paper_retrieval_recall_at_1": float((ranks == 1).float().mean()),
              "paper_retrieval_recall_at_10": float((ranks <= 10).float().mean()),
              "n_items": {"paper_retrieval": len(docs), "sts_spearman": len(pairs)},
              "paper_retrieval_chance_mrr": sum(1 / k for k in range(1, len(docs) + 1)) / len(docs)}
    return scores, detail


# ---------------------------------------------------------------- what the runner calls
SUITE_VERSION = 1  # bump when an item or a score changes: cached reference scores are keyed by it


def evaluate(loaded, papers_dir: str | Path = "papers") -> tuple[dict, dict]:
    """(scores, detail) of the model as it is now (float32, the model's own precision)."""
    if loaded.kind == "causal":
        return run_causal(loaded.model, loaded.tokenizer, seq_len=min(loaded.max_length, MAX_TOKENS))
    return run_encoder(loaded.model, loaded.tokenizer, papers_dir)


def reference(loaded, papers_dir: str | Path = "papers") -> dict:
    """The uncompressed model's scores, through the on-disk evaluation cache when the project has it
    (keyed by the model's content hash, the task names and the suite version)."""
    names = CAUSAL_TASKS if loaded.kind == "causal" else ENCODER_TASKS
    try:
        from reference_impls.common import eval_cache
    except ImportError:  # the cache is optional machinery
        return evaluate(loaded, papers_dir)[0]
    model = loaded.model
    settings = {"kind": "tasks", "model": eval_cache.model_hash(model), "tasks": list(names),
                "suite": SUITE_VERSION, "seed": SEED, "device": next(model.parameters()).device.type,
                "torch": torch.__version__,
                "papers": None if loaded.kind == "causal" else eval_cache.text_hash(
                    [d + "\0" + q for d, q in zip(*encoder_items(str(papers_dir))[:2], strict=True)])}
    entry, _ = eval_cache.cached(settings, {"scores": (len(names),)}, lambda: {"scores": torch.tensor(
        [evaluate(loaded, papers_dir)[0][n] for n in names], dtype=torch.float64)})
    return {n: float(v) for n, v in zip(names, entry["scores"].tolist(), strict=True)}


def report(loaded, papers_dir: str | Path, fp_scores: dict) -> dict:
    """The run record's task figures: `tasks` (DESIGN §6: name -> score), `tasks_fp` (the uncompressed
    model's) and `tasks_detail` (curves, item counts, chance levels)."""
    scores, detail = evaluate(loaded, papers_dir)
    detail["chance"] = {k: detail.get(f"{k}_chance_mrr", CHANCE[k]) for k in scores}
    return {"tasks": scores, "tasks_fp": fp_scores, "tasks_detail": detail}
