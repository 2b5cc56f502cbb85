"""Minitron: importance on hand-computed and float64 oracles, exact trimming of the lowest units, a pruned
model that reloads from its own config, importance beating random choice, and KD beating CE afterwards."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import transformers as tf

from reference_impls.common import registry
from reference_impls.common.adapters import adapter_for
from reference_impls.common.models import LoadedModel, load_model, tiny_model
from reference_impls.common.runner import RunContext
from reference_impls.pruning import minitron as M


def llama(*, tied: bool = False, layers: int = 3, seed: int = 0):
    base = tiny_model("llama", seed=seed)
    cfg = base.config
    cfg.num_hidden_layers, cfg.tie_word_embeddings = layers, tied
    torch.manual_seed(seed)
    model = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm scales, so channels differ in importance
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def calib(n=3, seq=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 128, (2, seq), generator=g)} for _ in range(n)]


def test_aggregations_and_head_scores_on_a_hand_computed_case():
    # two samples, three tokens, two channels
    x = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [-2.0, 2.0]],
                      [[0.0, 4.0], [0.0, -4.0], [3.0, 1.0]]])
    # mean |x| over the sequence: sample 0 -> (2, 4/3), sample 1 -> (1, 3); L2 over the batch
    expected = torch.tensor([math.sqrt(4 + 1), math.sqrt(16 / 9 + 9)], dtype=torch.float64)
    torch.testing.assert_close(M.channel_importance(x), expected)
    torch.testing.assert_close(M.channel_importance(x, seq="l2", batch="mean"),
                               torch.tensor([(math.sqrt(14) + 3) / 2, (math.sqrt(8) + math.sqrt(33)) / 2],
                                            dtype=torch.float64))
    torch.testing.assert_close(M.aggregate(torch.tensor([1.0, 3.0]), 0, "var"), torch.tensor(1.0))
    # heads of two channels each: the L2 norm of their channels' scores
    scores = torch.tensor([3.0, 4.0, 0.0, 2.0])
    torch.testing.assert_close(M.head_importance(scores, 2), torch.tensor([5.0, 2.0]))
    assert M.top_k(torch.tensor([0.3, 0.1, 0.9, 0.5]), 2).tolist() == [2, 3]
    with pytest.raises(ValueError, match="aggregation"):
        M.aggregate(x, 0, "max")


@torch.no_grad()
def test_model_importance_equals_a_float64_recomputation_from_hidden_states():
    """Neurons, heads and embedding channels recomputed layer by layer from the model's hidden states
    (o_proj's input recovered by solving o_proj, which is square here), without any hook."""
    model = llama(layers=2).double()
    batches = calib()
    imp = M.width_importance(model, batches)
    per = {k: [[], []] for k in ("heads", "neurons", "ln1", "ln2")}
    for b in batches:
        ids = b["input_ids"]
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states  # hs[i]: layer i's input
        pos = model.model.rotary_emb(hs[0], torch.arange(ids.shape[1])[None])
        for i, layer in enumerate(model.model.layers):
            ln1 = layer.input_layernorm(hs[i])
            attn_out = layer.self_attn(ln1, position_embeddings=pos, attention_mask=None)[0]
            z = torch.linalg.solve(layer.self_attn.o_proj.weight, attn_out.transpose(1, 2)).transpose(1, 2)
            ln2 = layer.post_attention_layernorm(hs[i] + attn_out)
            mlp = layer.mlp
            for key, v in (("heads", z), ("neurons", mlp.act_fn(mlp.gate_proj(ln2)) * mlp.up_proj(ln2)),
                           ("ln1", ln1), ("ln2", ln2)):
                per[key][i].append(v)
    score = {k: [M.channel_importance(torch.cat(v[i])) for i in range(2)] for k, v in per.items()}
    hd = model.model.layers[0].self_attn.head_dim
    for i in range(2):
        torch.testing.assert_close(imp.neurons[i], score["neurons"][i])
        heads = M.head_importance(score["heads"][i], hd)
        torch.testing.assert_close(imp.heads[i], heads, rtol=1e-6, atol=1e-9)
    # embedding channels: every block norm aggregated on its own, then summed over the norms
    torch.testing.assert_close(imp.embedding, sum(score["ln1"]) + sum(score["ln2"]))


@pytest.mark.parametrize("tied", [False, True])
def test_keeping_every_unit_leaves_the_outputs_unchanged(tied):
    model = llama(tied=tied)
    ids = calib()[0]["input_ids"]
    ref = model(input_ids=ids).logits
    imp = M.width_importance(model, calib())
    imp.layers = M.perplexity_without_each_layer(model, calib())
    shape = M.minitron_prune(model, imp, ratio=0.0, axes=("depth", "heads", "mlp", "embedding"))
    assert shape["removed_layers"] == [] and shape["hidden_size"] == 64
    torch.testing.assert_close(model(input_ids=ids).logits, ref, rtol=0, atol=0)


@pytest.mark.parametrize("tied", [False, True])
def test_pruning_removes_exactly_the_lowest_units_and_the_config_reloads(tied):
    model = llama(tied=tied, layers=3)
    dense = copy.deepcopy(model)
    g = torch.Generator().manual_seed(3)
    imp = M.Importance(heads=[torch.rand(4, generator=g) for _ in range(3)],
                       neurons=[torch.rand(160, generator=g) for _ in range(3)],
                       embedding=torch.rand(64, generator=g), layers=torch.tensor([3.0, 1.0, 2.0]))
    shape = M.minitron_prune(model, imp, ratio=0.5, axes=("depth", "heads", "mlp", "embedding"))
    assert shape == {"removed_layers": [1], "num_hidden_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 80, "hidden_size": 32}
    emb_keep = torch.sort(torch.argsort(imp.embedding, descending=True)[:32]).values
    torch.testing.assert_close(model.model.embed_tokens.weight, dense.model.embed_tokens.weight[:, emb_keep])
    for new_i, old_i in enumerate([0, 2]):
        new, old = model.model.layers[new_i], dense.model.layers[old_i]
        n_keep = torch.sort(torch.argsort(imp.neurons[old_i], descending=True)[:80]).values
        torch.testing.assert_close(new.mlp.gate_proj.weight, old.mlp.gate_proj.weight[n_keep][:, emb_keep])
        torch.testing.assert_close(new.mlp.down_proj.weight, old.mlp.down_proj.weight[emb_keep][:, n_keep])
        # per KV group (2 groups of 2 query heads), the better head of the two stays
        heads = [2 * g_ + int(imp.heads[old_i][2 * g_ + 1] > imp.heads[old_i][2 * g_]) for g_ in range(2)]
        rows = torch.cat([torch.arange(h * 16, h * 16 + 16) for h in heads])
        attn, old_attn = new.self_attn, old.self_attn
        torch.testing.assert_close(attn.q_proj.weight, old_attn.q_proj.weight[rows][:, emb_keep])
        torch.testing.assert_close(attn.o_proj.weight, old_attn.o_proj.weight[emb_keep][:, rows])
        torch.testing.assert_close(attn.k_proj.weight, old_attn.k_proj.weight[:, emb_keep])
        torch.testing.assert_close(new.input_layernorm.weight, old.input_layernorm.weight[emb_keep])
    ids = calib()[0]["input_ids"]
    out = model(input_ids=ids).logits
    assert out.shape == (2, 12, 128) and torch.isfinite(out).all()
    fresh = tf.LlamaForCausalLM(model.config).eval()  # the config alone rebuilds the pruned model
    fresh.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(fresh(input_ids=ids).logits, out)
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight


def test_bad_options_fail_before_any_model_work():
    m = registry.get("minitron")
    ctx = RunContext(loaded=LoadedModel("tiny", llama(), None, adapter_for(llama()), torch.device("cpu")))
    with pytest.raises(ValueError, match="--ratio"):
        m.apply(ctx, **{**m.defaults(), "ratio": 1.0})
    with pytest.raises(ValueError, match="--max-steps"):
        m.apply(ctx, **{**m.defaults(), "max_steps": -1})


def test_depth_and_width_pruning_then_kd_through_the_entry(monkeypatch):
    """The model-level path on a tiny model with the project tokenizer: layers removed, the kd stage
    finds every ledger name in the pruned model, and the removed layers count in the ledger."""
    from transformers import AutoTokenizer

    from reference_impls.common.models import CAUSAL_DIR
    from reference_impls.distillation import _causal

    tok = AutoTokenizer.from_pretrained(CAUSAL_DIR)
    teacher = tiny_model("llama", vocab_size=len(tok))
    dense = copy.deepcopy(teacher)
    monkeypatch.setattr(_causal, "load_model", lambda name, device: LoadedModel(
        name, copy.deepcopy(dense), tok, adapter_for(dense), torch.device("cpu")))
    ctx = RunContext(loaded=LoadedModel("tiny", teacher, tok, adapter_for(teacher), torch.device("cpu")),
                     calib_samples=4, eval_windows=2)
    m = registry.get("minitron")
    out = m.apply(ctx, **{**m.defaults(), "axis": "both", "ratio": 0.5, "max_steps": 3, "batch_size": 2,
                          "seq_len": 32})
    assert out["removed_layers"] and out["num_hidden_layers"] == 1 and out["hidden_size"] == 32
    assert out["distill_steps"] == out["no_distill_steps"] == 3 and out["recovered_from_dense"]
    assert out["params_kept"] < 0.6 and math.isfinite(out["perplexity_pruned"])
    removed = [n for n in ctx.ledger.layers if n.startswith("removed.")]
    assert len(removed) == 7 and all(ctx.ledger.layers[n][1] == 0 for n in removed)
    assert ctx.ledger.n_weights == sum(w.numel() for n, w in dense.named_parameters()
                                       if ".layers." in n and "norm" not in n)


@torch.no_grad()
def test_importance_beats_random_choice_on_the_project_lm():
    """Same kept sizes on the real model: the units the activations rank highest keep a far lower
    held-out perplexity than random units (three random draws)."""
    from reference_impls.common import data, evaluate

    loaded = load_model("causal", "cpu")
    windows = data.heldout_windows(loaded, max_windows=4)
    batches = data.calibration(loaded, n_samples=8, seed=0)
    imp = M.width_importance(loaded.model, batches)

    def pruned_ppl(importance):
        model = copy.deepcopy(loaded.model)
        M.minitron_prune(model, importance, ratio=0.25, axes=("heads", "mlp", "embedding"))
        return evaluate.perplexity(model, windows)

    ours = pruned_ppl(imp)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        rand = M.Importance(heads=[torch.rand(h.shape, generator=g) for h in imp.heads],
                            neurons=[torch.rand(n.shape, generator=g) for n in imp.neurons],
                            embedding=torch.rand(imp.embedding.shape, generator=g))
        assert ours < pruned_ppl(rand)


@pytest.mark.slow
def test_kd_after_pruning_beats_cross_entropy_for_the_same_steps():
    """The project LM pruned by a quarter of its width, then 15 steps: logit-only KD from the dense model
    ends closer to it (held-out KL) and lower in perplexity than CE alone on the same windows."""
    from reference_impls.common.runner import run_method

    rec = run_method("minitron", model="causal", eval_windows=8, calib_samples=16,
                     options={"max_steps": 15, "batch_size": 4, "axis": "width", "ratio": 0.25})
    m = rec["metrics"]
    assert m["heldout_kl"] < m["heldout_kl_no_distill"]
    assert m["perplexity"] < m["perplexity_no_distill"] < m["perplexity_pruned"]
    assert m["perplexity_fp"] < m["perplexity"]
