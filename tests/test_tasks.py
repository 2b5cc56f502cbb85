"""The task suite beyond perplexity (reference_impls/common/tasks.py)."""

import copy

import pytest
import torch

from reference_impls.common import corpus, tasks
from reference_impls.common.models import load_model


@pytest.fixture(scope="module")
def causal():
    return load_model("causal")


def test_body_lines_skip_signature_docstring_comments_and_blank_lines():
    src = 'def f(a, b):\n    """Doc\n    string."""\n    # note\n\n    c = a + b\n    return c\n'
    spans, doc = tasks._body_lines(src)
    assert doc == {2, 3}
    assert [src[a:b] for a, b in spans] == ["c = a + b", "return c"]


def test_identifiers_are_earlier_names_reused_in_the_body():
    src = "def area(width, height):\n    size = width * height\n    return size\n"
    body = src.index("size")
    got = [src[a:b] for a, b in tasks._identifiers(src, body)]
    assert got == ["width", "height", "size"]  # first `size` is new; keywords and short names skipped


def test_module_facts_count_dotted_uses_in_importing_files(monkeypatch):
    texts = ["import os\nos.path.join(a)\nos.path.join(b)\nx.os.sep\n",
             "import re, os\nre.compile(p)\nos.sep\n", "re.sub(x)\n"]  # no import: not counted
    monkeypatch.setattr(corpus, "split_texts", lambda part: texts)
    tasks.module_facts.cache_clear()
    try:
        facts = tasks.module_facts()
    finally:
        tasks.module_facts.cache_clear()
    assert facts["os"] == {"path": 2, "sep": 1}  # `x.os.sep` is not the module os
    assert facts["os.path"] == {"join": 2}
    assert facts["re"] == {"compile": 1}


def test_exact_match_under_teacher_forcing_equals_greedy_generation(causal):
    """The suite's premise: a span is reproduced by greedy decoding iff every one of its tokens is the
    arg-max given the true prefix. Checked against model.generate on real held-out lines."""
    lines, _ = tasks._code_items(causal.tokenizer, seed=0)
    correct = tasks._predictions(causal.model, lines.ids[:6])
    checked = 0
    for r, toks in lines.spans:
        if r >= 6 or checked >= 6:
            continue
        start, n = toks[0], len(toks)
        prefix = lines.ids[r : r + 1, :start]
        out = causal.model.generate(prefix, max_new_tokens=n, do_sample=False, pad_token_id=0)
        greedy = torch.equal(out[0, start : start + n], lines.ids[r, start : start + n])
        assert greedy == tasks._exact(correct, [(r, toks)])[0]
        checked += 1
    assert checked == 6


def test_items_are_deterministic_and_the_recall_control_hides_the_name(causal):
    tok = causal.tokenizer
    a, b = tasks._recall_items(tok, 0), tasks._recall_items(tok, 0)
    assert torch.equal(a.ids, b.ids) and a.spans == b.spans and a.tags == b.tags
    assert not torch.equal(tasks._recall_items(tok, 1).ids[:4], a.ids[:4])
    control = tasks._recall_items(tok, 0, control=True)
    assert len(control.spans) == len(a.spans)
    for row, row_c in zip(a.ids[:8], control.ids[:8], strict=True):
        text, text_c = tok.decode(row), tok.decode(row_c)
        used = text.rsplit("result = ", 1)[1].split()[0]
        assert used == text_c.rsplit("result = ", 1)[1].split()[0]
        head = "".join(text.splitlines(keepends=True)[: tasks.RECALL_DEFS])
        head_c = "".join(text_c.splitlines(keepends=True)[: tasks.RECALL_DEFS])
        assert f"{used} = " in head and used not in head_c  # the control never defines it


@pytest.mark.slow
def test_suite_separates_the_real_models_from_destroyed_ones(causal, tmp_path):
    scores, detail = tasks.run_causal(causal.model, causal.tokenizer)
    again, _ = tasks.run_causal(causal.model, causal.tokenizer)
    assert scores == again  # deterministic
    destroyed = copy.deepcopy(causal.model)
    torch.manual_seed(0)
    for p in destroyed.parameters():
        p.data = torch.randn_like(p) * 0.02
    bad, _ = tasks.run_causal(destroyed, causal.tokenizer)
    assert scores["knowledge_recall"] > 0.6 and abs(bad["knowledge_recall"] - 0.25) < 0.15
    for name in ("code_line", "code_identifier", "context_recall", "long_context"):
        assert scores[name] > 0.02 and bad[name] < 0.01, name
    assert scores["code_identifier"] > 0.1 and scores["long_context"] > 0.25
    # recall comes from the context: the same rows without the name's definition score far lower
    control = tasks._recall_items(causal.tokenizer, tasks.SEED, control=True)
    ok = tasks._predictions(causal.model, control.ids)
    assert tasks._mean(tasks._token_accuracy(ok, control.spans)) < scores["context_recall"] / 2

    enc = load_model("encoder")
    good, _ = tasks.run_encoder(enc.model, enc.tokenizer)
    for p in enc.model.parameters():
        p.data = torch.randn_like(p) * 0.02
    rand, detail = tasks.run_encoder(enc.model, enc.tokenizer)
    chance = detail["paper_retrieval_chance_mrr"]
    assert good["paper_retrieval"] > 10 * chance and rand["paper_retrieval"] < 4 * chance
    assert good["sts_spearman"] > 0.3 and abs(rand["sts_spearman"]) < 0.15
