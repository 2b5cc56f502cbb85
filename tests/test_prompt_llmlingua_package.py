"""Peer check: our LLMLingua against the official package (llmlingua 0.2.2) on the project's causal LM.

`PromptCompressor.__init__` cannot run offline (it fetches tiktoken's gpt-3.5 encoding, used only to count
tokens for its report), so the compressor is built without it and given a word counter instead; and
0.2.2 passes KV caches as lists of (key, value) pairs, which transformers 5 no longer accepts, so the
model is wrapped to convert them to and from a `DynamicCache`. Neither changes what the package computes.
"""

import types

import pytest
import torch

llmlingua = pytest.importorskip("llmlingua", reason="the official llmlingua package (pip install "
                                "--no-deps llmlingua==0.2.2 tiktoken nltk) is the peer of this check")


class LegacyCacheModel(torch.nn.Module):
    """The package's calling convention (tuple caches in and out) over a transformers-5 model."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=True):
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(past_key_values or []):
            cache.update(k, v, i)
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True)
        return types.SimpleNamespace(logits=out.logits,
                                     past_key_values=[(layer.keys, layer.values) for layer in cache.layers])


@pytest.mark.slow
def test_token_level_and_budget_controller_agree_with_the_package():
    from reference_impls.common.data import heldout_windows
    from reference_impls.common.models import load_model
    from reference_impls.common.prompt_eval import token_surprisal
    from reference_impls.prompt.llmlingua import (
        budget_controller,
        chunk_ratios,
        iterative_compress,
        mean_score,
        segment_spans,
        token_pieces,
    )

    comp = llmlingua.PromptCompressor.__new__(llmlingua.PromptCompressor)
    comp.use_llmlingua2, comp.retrieval_model, comp.retrieval_model_name = False, None, None
    comp.open_api_config, comp.cache_bos_num, comp.prefix_bos_num, comp.context_idxs = {}, 10, 100, []
    comp.oai_tokenizer = types.SimpleNamespace(encode=lambda s: s.split())
    comp.load_model("models/causal-lm", "cpu", {})
    comp.model = LegacyCacheModel(comp.model)
    loaded = load_model("causal")

    def score(ids):
        return token_surprisal(loaded.model, ids)

    for window in heldout_windows(loaded, max_windows=2):
        text = loaded.tokenizer.decode(window[:192])
        ids = torch.tensor(comp.tokenizer(text, add_special_tokens=False).input_ids)
        for iterative_size, rate in ((64, 0.5), (40, 0.3)):
            target = rate * ids.numel()
            theirs = comp.iterative_compress_prompt([text], target, iterative_size=iterative_size,
                                                    dynamic_ratio=[0.0])[0][0]
            # the package joins contexts with "\n\n" and counts 2 tokens for it per context
            plan = chunk_ratios([ids.numel() + 2], target_token=target, iterative_size=iterative_size,
                                dynamic_ratio=[0.0])
            ours = ids[iterative_compress(ids, score, plan=plan, iterative_size=iterative_size)]
            assert torch.equal(ours, theirs)

        # coarse stage: the same segments given to the package as separate contexts
        segments = [ids[s:e] for s, e in segment_spans(token_pieces(loaded.tokenizer, ids), max_tokens=32)]
        texts = [loaded.tokenizer.decode(s) for s in segments]
        lengths = [comp.get_token_length(t) for t in texts]
        _, _, theirs_used = comp.control_context_budget(texts, lengths, 0.4 * ids.numel(),
                                                        rank_method="llmlingua", context_budget="+16")
        ppl = [mean_score(score, torch.tensor(comp.tokenizer(t, add_special_tokens=False).input_ids))
               for t in texts]
        ours_used = budget_controller(ppl, lengths, target_token=0.4 * ids.numel(), context_budget=16)
        assert sorted(ours_used) == theirs_used
