"""In-context learning distillation: the few-shot task and its prompt builder, the objective's oracles
(zero at student == teacher, hand-computed parts, gradients to the student only), a short run, and the
model-level claim against the no-teacher baseline."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reference_impls.common import fewshot_task as ft
from reference_impls.common import synthetic_task as st
from reference_impls.distillation import icl_distill

OPTS = {name: o.default for name, o in icl_distill.OPTIONS.items()}


def test_prompt_builder_puts_k_demonstrations_of_one_mapping_before_the_query():
    rng = random.Random(0)
    mapping = (3, 7, 1, 0, 9, 2, 8, 6, 5, 4)
    for shots in (1, 4, 9):
        p = ft.few_shot(mapping, shots, rng)
        *demos, query = p.prompt.split(";")
        assert len(demos) == shots and len(set(p.inputs)) == shots
        for d, x in zip(demos, p.inputs, strict=True):
            assert d == f"{x}{mapping[x]}"  # every demonstration shows the prompt's own mapping
        assert query == f"{p.query}" and p.query in p.inputs and p.label == str(mapping[p.query])
    assert ft.FewShot(mapping, (4, 0), 0).prompt == "49;03;0"
    with pytest.raises(ValueError, match="--shots"):
        ft.few_shot(mapping, 10, rng)


def test_held_out_mappings_are_never_trained_on_and_answers_need_the_demonstrations():
    held = ft.held_out_mappings(50)
    assert len(set(held)) == 50 and all(sorted(m) == list(range(10)) for m in held)
    train = ft.train_prompts(2000, 4, seed=0, held_out=set(held))
    assert not {p.mapping for p in train} & set(held)
    spec = ft.IclTeacherSpec(n_test=50, n_sequences=200)
    assert {p.mapping for p in spec.test_prompts()} == set(held)
    rows = spec.rows()
    assert len(rows) == 200 and all(len(ids) == 1 + 3 * spec.pairs for ids, _ in rows)
    # the same input maps to every output across prompts: the query alone says nothing
    answers = {p.label for p in train if p.query == 3}
    assert answers == {str(d) for d in range(10)}


def test_icl_sequence_masks_every_output_digit():
    ids, mask = ft.icl_sequence((3, 7, 1, 0, 9, 2, 8, 6, 5, 4), [1, 1, 0])
    assert st.decode(ids) == "17;17;03;"
    assert [st.decode([t]) for t, m in zip(ids, mask, strict=True) if m] == ["7", "7", "3"]


def _logits(seed, shape=(3, 6, st.VOCAB_SIZE)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _masks():
    icl = torch.zeros(3, 6, dtype=torch.bool)
    icl[:, -1] = True
    return icl, ~icl


def test_loss_is_zero_at_student_equals_teacher_and_positive_otherwise():
    t = _logits(0)
    y = torch.randint(0, st.VOCAB_SIZE, (3, 6), generator=torch.Generator().manual_seed(1))
    icl, lm = _masks()
    kw = dict(soft_weight=1.0, lm_weight=0.7, temperature=2.0)
    assert icl_distill.icl_distill_loss(t.clone(), t, y, icl, lm, **kw).item() == pytest.approx(0, abs=1e-12)
    assert icl_distill.icl_distill_loss(_logits(2), t, y, icl, lm, **kw).item() > 0.01


def test_loss_parts_by_hand_in_float64():
    s, t = _logits(3), _logits(4)
    y = torch.randint(0, st.VOCAB_SIZE, (3, 6), generator=torch.Generator().manual_seed(5))
    icl, lm = _masks()
    alpha, beta, temp = 0.3, 0.5, 2.0

    def part(mask):
        ls, lt = (s[mask] / temp).log_softmax(-1), (t[mask] / temp).log_softmax(-1)
        kl = (lt.exp() * (lt - ls)).sum(-1).mean() * temp**2
        ce = -s[mask].log_softmax(-1).gather(1, y[mask][:, None]).mean()
        return (1 - alpha) * ce + alpha * kl

    got = icl_distill.icl_distill_loss(s, t, y, icl, lm, soft_weight=alpha, lm_weight=beta, temperature=temp)
    assert got.item() == pytest.approx((part(icl) + beta * part(lm)).item(), rel=1e-10)
    # α = 0: the no-teacher baseline, plain cross-entropy of both objectives; the teacher is never read
    base = icl_distill.icl_distill_loss(s, None, y, icl, lm, soft_weight=0.0, lm_weight=beta,
                                        temperature=temp)
    ref = F.cross_entropy(s[icl], y[icl]) + beta * F.cross_entropy(s[lm], y[lm])
    assert base.item() == pytest.approx(ref.item(), rel=1e-10)


def test_prompt_rows_mark_the_answer_and_the_prompt_text():
    p = ft.FewShot((3, 7, 1, 0, 9, 2, 8, 6, 5, 4), (4, 0), 0)
    rows = icl_distill.prompt_rows([p, p])
    assert st.decode(rows["input_ids"][0]) == "49;03;03"
    assert st.decode(rows["targets"][0][rows["icl_mask"][0]]) == "3"
    assert st.decode(rows["targets"][0][rows["lm_mask"][0]]) == "49;03;0"


def test_gradients_reach_only_the_student_and_a_short_run_decreases_the_loss():
    teacher = st.make_model(layers=1, hidden=32, seed=1)
    student = st.make_model(layers=1, hidden=32, seed=2)
    rows = icl_distill.prompt_rows(ft.train_prompts(64, 3, seed=0, held_out=set()))
    t_logits = icl_distill.teacher_logits(teacher, rows["input_ids"])
    assert not t_logits.requires_grad
    logits = student(input_ids=rows["input_ids"]).logits[:, :-1]
    loss = icl_distill.icl_distill_loss(logits, t_logits, rows["targets"], rows["icl_mask"], rows["lm_mask"],
                                        soft_weight=0.5, lm_weight=1.0, temperature=2.0)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    student.zero_grad()
    opts = dict(OPTS, seed=0, max_steps=60, batch_size=16, lr=1e-2)
    result = icl_distill.train_student(student, rows, t_logits, opts, soft_weight=0.5)
    assert result.steps == 60 and sum(result.losses[-5:]) < 0.9 * sum(result.losses[:5])


def test_bad_options_fail_with_the_option_name():
    for key, value, flag in (("shots", 0, "--shots"), ("student_hidden", 48, "--student-hidden"),
                             ("soft_weight", 1.5, "--soft-weight"), ("temperature", 0, "--temperature")):
        with pytest.raises(ValueError, match=flag):
            icl_distill.check_options(**dict(OPTS, **{key: value}))


@pytest.mark.slow
def test_atlas_run_icl_distill_end_to_end_and_the_student_is_closer_to_its_teacher(tmp_path):
    """A tiny run through the CLI. With a teacher this small (a few seconds of in-context tuning) the
    few-shot accuracies are near chance, so the model-level claim checked here is the issue's "closer
    to the teacher": held-out KL(teacher ‖ student) of the answer distribution below the baseline's.
    This holds for a near-uniform tiny teacher; with the bench's sharp 100%-accurate teacher the held-out
    KL is about equal (2.11 vs 2.12) and the few-shot accuracies are measured by `atlas bench icl-distill`
    (results/icl-distill.json; distillation/README.md says where distillation wins and where not)."""
    env = dict(os.environ, ATLAS_CACHE=str(tmp_path), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    atlas = str(Path(sys.executable).with_name("atlas"))
    cmd = [atlas, "run", "icl-distill", "--json", "--eval-windows", "2", "--shots", "3",
           "--teacher-layers", "1", "--teacher-hidden", "32", "--teacher-steps", "60",
           "--student-layers", "1", "--student-hidden", "32", "--n-train", "128", "--max-steps", "40",
           "--lr", "0.01"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=True).stdout
    m = json.loads(out[out.index("{"):])["metrics"]
    assert m["distill_steps"] == m["baseline_steps"] == 40 and m["shots"] == 3
    for key in ("task_accuracy", "task_accuracy_baseline", "task_accuracy_teacher"):
        assert 0 <= m[key] <= 1
    assert m["transfer_examples"] == 128 and m["test_prompts"] == 500
    assert m["distill_loss_last"] < m["distill_loss_first"]
    assert m["heldout_kl"] < 0.8 * m["heldout_kl_no_distill"]
