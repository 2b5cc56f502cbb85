"""The shared training loop, teacher/student helper, student builder and peft adapters."""

import time

import pytest
import torch
from torch import nn

from reference_impls.common import training as T
from reference_impls.common.models import tiny_model


def _toy_regression(seed: int = 0):
    """y = A x: a linear model can learn it exactly, so the loss must fall."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(4, 8, generator=g)
    xs = [torch.randn(16, 8, generator=g) for _ in range(8)]
    return [(x, x @ A.T) for x in xs]


def _fit(seed: int, steps: int = 60, **cfg):
    torch.manual_seed(123)  # the model's init; the loop sets its own seed
    model = nn.Linear(8, 4)
    data = _toy_regression()
    res = T.train(model.parameters(), lambda b: (model(b[0]) - b[1]).pow(2).mean(), T.cycle(data),
                  T.TrainConfig(max_steps=steps, lr=5e-2, warmup_steps=5, seed=seed, bf16=False, **cfg))
    return model, res


def test_loss_decreases_on_a_learnable_task():
    _, res = _fit(0)
    assert res.steps == 60 and res.stopped_by == "max_steps"
    assert res.losses[-1] < 0.05 * res.losses[0]


def test_fixed_seed_is_bit_reproducible_with_dropout():
    def run(disturb: int):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(8, 32), nn.Dropout(0.5), nn.Linear(32, 4))  # draws random numbers
        torch.rand(disturb)  # a different global RNG state: the loop's own seed must decide the dropout masks
        data = _toy_regression()
        res = T.train(model.parameters(), lambda b: (model(b[0]) - b[1]).pow(2).mean(), T.cycle(data),
                      T.TrainConfig(max_steps=15, seed=7, bf16=False))
        return res.losses, [p.detach().clone() for p in model.parameters()]

    (l1, p1), (l2, p2) = run(1), run(5)
    assert l1 == l2
    assert all(torch.equal(a, b) for a, b in zip(p1, p2, strict=True))


def test_wall_clock_budget_stops_the_loop():
    def slow_loss(b):
        time.sleep(0.05)
        return (model(b[0]) - b[1]).pow(2).mean()

    model = nn.Linear(8, 4)
    t0 = time.perf_counter()
    res = T.train(model.parameters(), slow_loss, T.cycle(_toy_regression()),
                  T.TrainConfig(max_steps=10_000, time_budget=0.3, bf16=False))
    assert res.stopped_by == "time_budget"
    assert 2 <= res.steps < 50 and time.perf_counter() - t0 < 3


def test_schedule_warms_up_then_decays_by_cosine():
    cfg = T.TrainConfig(max_steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert T.lr_at(0, cfg) == pytest.approx(0.1) and T.lr_at(9, cfg) == pytest.approx(1.0)
    assert T.lr_at(10, cfg) == pytest.approx(1.0)
    assert T.lr_at(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: cos = 0
    assert T.lr_at(110, cfg) == pytest.approx(0.1)


def test_bad_settings_are_rejected():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="max-steps"):
        T.train(model.parameters(), lambda b: model(b).sum(), lambda s: torch.ones(1, 2),
                T.TrainConfig(max_steps=0))
    with pytest.raises(ValueError, match="time-budget"):
        T.train(model.parameters(), lambda b: model(b).sum(), lambda s: torch.ones(1, 2),
                T.TrainConfig(time_budget=-1))


def test_teacher_gets_no_gradient_and_student_does():
    teacher = tiny_model("llama")
    student = T.make_student(teacher, num_layers=1)
    pair = T.TeacherStudent(teacher, student)
    ids = torch.randint(0, 128, (2, 12))
    s, t = pair({"input_ids": ids}, hidden_states=True)
    loss = (s.logits - t.logits).pow(2).mean() + s.hidden_states[-1].pow(2).mean()
    loss.backward()
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert len(t.hidden_states) == 3 and len(s.hidden_states) == 2


def test_attentions_come_from_the_eager_path():
    teacher = tiny_model("llama")
    pair = T.TeacherStudent(teacher, T.make_student(teacher, layers=[1]), attentions=True)
    s, t = pair({"input_ids": torch.randint(0, 128, (1, 10))})
    assert t.attentions[0].shape == (1, 4, 10, 10)
    assert torch.allclose(t.attentions[0].sum(-1), torch.ones(1, 4, 10))


def test_student_from_teacher_layers_copies_them():
    teacher = tiny_model("llama")
    student = T.make_student(teacher, layers=[1])
    assert student.config.num_hidden_layers == 1
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, teacher.model.layers[1].mlp.up_proj.weight)
    assert student.model.layers[0].self_attn.layer_idx == 0  # the KV cache indexes layers by it
    ids = torch.randint(0, 128, (1, 8))
    student.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)  # a cache works
    assert T.make_student(tiny_model("bert"), num_layers=1).config.num_hidden_layers == 1
    with pytest.raises(ValueError, match="width"):
        T.make_student(teacher, num_layers=1, hidden_size=32)


def test_random_narrow_student():
    teacher = tiny_model("llama")
    student = T.make_student(teacher, num_layers=1, hidden_size=32, intermediate_size=64, init="random")
    n_s = sum(p.numel() for p in student.parameters())
    assert student.model.layers[0].mlp.up_proj.weight.shape == (64, 32)
    assert n_s < sum(p.numel() for p in teacher.parameters()) / 2
    assert student(torch.randint(0, 128, (1, 5))).logits.shape == (1, 5, 128)


def test_lora_through_peft_trains_only_adapters_and_merges():
    model = tiny_model("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_model = T.add_lora(model, rank=4)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 7 * 2  # A and B for the 7 linears of each of 2 blocks
    ids = torch.randint(0, 128, (4, 16))
    res = T.train(peft_model.parameters(), T.causal_lm_loss(peft_model), T.cycle([{"input_ids": ids}]),
                  T.TrainConfig(max_steps=15, lr=1e-2, bf16=False))
    assert res.losses[-1] < res.losses[0]
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
    merged = T.merge_lora(peft_model)
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, adapted, atol=1e-4)
    assert torch.equal(merged.model.embed_tokens.weight, before["model.embed_tokens.weight"])
    q_name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight, before[q_name])
