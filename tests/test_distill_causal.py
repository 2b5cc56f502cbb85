"""Causal-LM distillation methods (kd, seqkd, gkd, distillm, minillm) on a tiny random-init Llama teacher
with the project's tokenizer, plus their pieces: sampling, the DistiLLM schedule, the MiniLLM loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from reference_impls.common import registry
from reference_impls.common.adapters import adapter_for
from reference_impls.common.models import CAUSAL_DIR, LoadedModel, tiny_model
from reference_impls.common.runner import RunContext
from reference_impls.distillation import _causal
from reference_impls.distillation.distillm import AdaptiveSGO
from reference_impls.distillation.minillm import minillm_loss
from reference_impls.distillation.seqkd import teacher_outputs

SMALL = dict(student_layers=1, max_steps=4, batch_size=2, seq_len=32)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(CAUSAL_DIR)


def _ctx(tokenizer, seed=0):
    teacher = tiny_model("llama", vocab_size=len(tokenizer), seed=seed)
    loaded = LoadedModel("tiny", teacher, tokenizer, adapter_for(teacher), torch.device("cpu"))
    return RunContext(loaded=loaded, calib_samples=4, seed=0, eval_windows=2)


def _run(name, ctx, **opts):
    m = registry.get(name)
    return m.apply(ctx, **{**m.defaults(), **SMALL, **opts})


@pytest.mark.parametrize("name,opts", [("kd", {}), ("seqkd", {"gen_tokens": 8, "num_beams": 2}),
                                       ("gkd", {"gen_tokens": 8, "lmbda": 1.0}),
                                       ("distillm", {"gen_tokens": 8, "init_threshold": 1.0}),
                                       ("minillm", {"gen_tokens": 8})])
def test_method_trains_only_the_student_and_reports(tokenizer, name, opts):
    ctx = _ctx(tokenizer)
    teacher = ctx.model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out = _run(name, ctx, **opts)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # teacher untouched
    student = ctx.model
    assert student is not teacher and student.config.num_hidden_layers == 1
    assert out["distill_steps"] == out["no_distill_steps"] == 4
    for key in ("heldout_kl", "heldout_kl_no_distill", "perplexity_no_distill"):
        assert math.isfinite(out[key]) and out[key] > 0
    assert out["student_params"] < out["teacher_params"]
    if name == "gkd":
        assert out["on_policy_batches"] == 4
    if name == "distillm":
        assert out["sgo_generated_batches"] + out["sgo_replayed_batches"] == 4


def test_kd_student_ends_closer_to_the_teacher_than_plain_training(tokenizer):
    """Same student, windows and steps: KD lowers the held-out KL to the teacher, CE alone does not."""
    ctx = _ctx(tokenizer)
    with torch.no_grad():
        ctx.model.lm_head.weight.mul_(10.0)  # a peaked teacher, far from a fresh student's uniform guess
    out = _run("kd", ctx, max_steps=25, lr=1e-2, alpha=1.0, temperature=1.0, student_init="random")
    assert out["heldout_kl"] < 0.7 * out["heldout_kl_no_distill"]


def test_a_short_kd_run_lowers_the_loss():
    from reference_impls.common.training import TeacherStudent, TrainConfig, train
    from reference_impls.distillation.kd import kd_loss

    teacher, student = tiny_model("llama", seed=1), tiny_model("llama", seed=2).train()
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    pair = TeacherStudent(teacher, student)

    def loss_fn(batch):
        s, t = pair(batch)
        return kd_loss(s.logits[:, :-1], t.logits[:, :-1], ids[:, 1:], temperature=2.0, alpha=0.5)

    res = train(student.parameters(), loss_fn, lambda step: {"input_ids": ids},
                TrainConfig(max_steps=30, lr=1e-2, warmup_steps=2, bf16=False, progress=False))
    assert res.losses[-1] < 0.5 * res.losses[0]


def test_options_are_checked_before_any_work(tokenizer):
    ctx = _ctx(tokenizer)
    with pytest.raises(ValueError, match="--student-hidden"):
        _run("kd", ctx, student_hidden=128)
    with pytest.raises(ValueError, match="--alpha"):
        _run("kd", ctx, alpha=2.0)
    with pytest.raises(ValueError, match="--gen-tokens"):
        _run("gkd", ctx, gen_tokens=32)
    with pytest.raises(ValueError, match="--max-steps"):
        _run("minillm", ctx, max_steps=0)


def test_cached_sampling_equals_full_recomputation():
    """`sample` (KV cache, teacher mixture) draws the same tokens as recomputing whole prefixes."""
    student, teacher = tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    prompts = torch.randint(0, 128, (3, 5), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    got = _causal.sample(student, prompts, max_new_tokens=6, teacher=teacher, teacher_mix=0.3)
    torch.manual_seed(7)
    ids = prompts
    with torch.no_grad():
        for _ in range(6):
            q = student(input_ids=ids).logits[:, -1].softmax(-1)
            p = teacher(input_ids=ids).logits[:, -1].softmax(-1)
            ids = torch.cat([ids, torch.multinomial(0.7 * q + 0.3 * p, 1)], 1)
    assert torch.equal(got, ids)


def test_seqkd_greedy_targets_are_the_teachers_argmax_path():
    teacher = tiny_model("llama", seed=3)
    teacher.config.pad_token_id = 0
    windows = torch.randint(1, 128, (2, 10), generator=torch.Generator().manual_seed(1))
    out = teacher_outputs(teacher, windows, gen_tokens=4, decoding="greedy", num_beams=1)
    ids = windows[:, :6]
    with torch.no_grad():
        for _ in range(4):
            ids = torch.cat([ids, teacher(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)


def test_distillm_schedule_follows_the_official_rules():
    s = AdaptiveSGO(init_threshold=0.0, loss_eps=0.1, capacity=4, total_steps=100)
    assert s.choose(0, 0.0001) == "fixed"  # threshold 0: never student outputs
    s.observe_validation(2.0)
    s.observe_validation(2.05)  # rise below loss_eps: no change
    assert s.threshold == 0.0
    s.observe_validation(2.1)  # ≥ previous + eps
    assert s.threshold == pytest.approx(0.1) and s.prev_val == 2.1
    assert s.choose(50, 0.09) == "generate"  # buffer not full
    s.buffer.extend(range(4))
    assert s.choose(50, 0.04) == "generate"  # r < 0.1·(1 − 50/100)
    assert s.choose(50, 0.06) == "replay"  # 0.05 ≤ r < 0.1, buffer full
    assert s.choose(50, 0.5) == "fixed"
    for v in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13):
        s.observe_validation(float(v))
    assert s.threshold == 1.0


def test_minillm_loss_is_zero_at_the_teacher_and_follows_the_policy_gradient():
    g = torch.Generator().manual_seed(0)
    t_logits = torch.randn(2, 5, 7, generator=g)
    tokens = torch.randint(0, 7, (2, 5), generator=g)
    s = t_logits.clone().requires_grad_(True)
    loss, stats = minillm_loss(s, t_logits, tokens, teacher_mix=0.2)
    loss.backward()
    assert abs(loss.item()) < 1e-6 and stats["reward"] == pytest.approx(0.0, abs=1e-6)
    assert s.grad.abs().max() < 1e-6
    # away from the teacher, the policy term is −mean(A·w·log q(y)) with A, w constants (eq. 6-7)
    s = torch.randn(2, 5, 7, generator=g, requires_grad=True)
    loss, _ = minillm_loss(s, t_logits, tokens, teacher_mix=0.2, single_step=False)
    (grad,) = torch.autograd.grad(loss, s)
    lq = F.log_softmax(s, -1).gather(-1, tokens[..., None]).squeeze(-1)
    lp = F.log_softmax(t_logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    with torch.no_grad():
        r = (lp - lq).tolist()
        R = torch.tensor([[sum(row[t:]) / (5 - t) for t in range(5)] for row in r])
        A = (R - R.mean()) / R.std()
        w = lq.exp() / (0.8 * lq.exp() + 0.2 * lp.exp())
    (ref,) = torch.autograd.grad(-(A * w * lq).mean(), s)
    torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-6)


def test_kd_after_pruning_recovers_from_the_dense_original(tokenizer, monkeypatch):
    """`magnitude+kd`: the pruned model is the student, the dense model (reloaded) the teacher, and
    the pruned weights stay zero through training; a quantizing stage before kd is refused."""
    import copy

    ctx = _ctx(tokenizer)
    dense = copy.deepcopy(ctx.model)
    monkeypatch.setattr(_causal, "load_model", lambda name, device: LoadedModel(
        name, copy.deepcopy(dense), tokenizer, adapter_for(dense), torch.device("cpu")))
    prune = registry.get("magnitude")
    prune.apply(ctx, **{**prune.defaults(), "sparsity": 0.5})
    pruned = ctx.model
    zeros = {n: (pruned.get_submodule(n).weight == 0).clone() for n in ctx.ledger.layers}
    out = _run("kd", ctx)
    assert ctx.model is pruned and out["recovered_from_dense"]
    assert out["student_sparsity"] == pytest.approx(0.5, abs=0.01)
    for n, z in zeros.items():
        w = pruned.get_submodule(n).weight
        assert torch.all(w[z] == 0) and not torch.equal(w, dense.get_submodule(n).weight)
    assert out["heldout_kl"] > 0 and math.isfinite(out["perplexity_no_distill"])

    ctx = _ctx(tokenizer)
    rtn = registry.get("rtn")
    rtn.apply(ctx, **{**rtn.defaults(), "bits": 4})
    with pytest.raises(ValueError, match="quantizing"):
        _run("kd", ctx)


def test_composition_path_hands_kd_the_pruned_model(tokenizer, monkeypatch):
    """Through compose.apply_stages (each stage writes a fresh ledger) kd must still see that an
    earlier stage pruned the model: the pruned model trains, not a new two-layer student."""
    import copy

    from reference_impls.common.compose import apply_stages

    ctx = _ctx(tokenizer)
    dense = copy.deepcopy(ctx.model)
    monkeypatch.setattr(_causal, "load_model", lambda name, device: LoadedModel(
        name, copy.deepcopy(dense), tokenizer, adapter_for(dense), torch.device("cpu")))
    prune, kd = registry.get("magnitude"), registry.get("kd")
    pruned = ctx.model
    metrics, stages = apply_stages(ctx, [prune, kd], [{**prune.defaults(), "sparsity": 0.5},
                                                      {**kd.defaults(), **SMALL}])
    assert metrics["recovered_from_dense"] and ctx.model is pruned
    assert metrics["student_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert [s["method"] for s in stages] == ["magnitude", "kd"] and ctx.ledger.layers  # the pruned ledger


@pytest.mark.slow
def test_kd_on_the_project_lm_beats_the_same_student_without_the_teacher():
    """The real teacher: after the same 20 steps on the same windows, the KD student is closer to the
    teacher (held-out KL) and has the lower held-out perplexity."""
    from reference_impls.common.runner import run_method

    rec = run_method("kd", model="causal", eval_windows=8, options={"max_steps": 20})
    m = rec["metrics"]
    assert m["heldout_kl"] < m["heldout_kl_no_distill"]
    assert m["perplexity"] < m["perplexity_no_distill"]
    assert m["perplexity_fp"] < m["perplexity"]  # the teacher stays better than its 2-layer student
