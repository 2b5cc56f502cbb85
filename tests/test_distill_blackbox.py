"""Black-box distillation: the synthetic task, its teacher, what the student is given, the step-by-step
objective, the results-table rule, and `atlas run step-by-step` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from catalog.results import Run
from reference_impls.common import synthetic_task as st
from reference_impls.distillation import _blackbox, instruct_distill, step_by_step

SMALL = st.TeacherSpec(n_terms=3, layers=2, hidden=64, steps=250, batch_size=32, lr=1e-2)  # ~10 s, ~70%


def test_problem_rationale_label_and_checker_by_hand():
    p = st.Problem((3, 8, 5, 9))
    assert p.prompt == "Q:3+8+5+9="
    assert p.rationale == "3+8=11;11+5=16;16+9=25" and p.label == "25"
    assert p.response == "3+8=11;11+5=16;16+9=25;A:25"
    assert st.parse(p.response) == ("3+8=11;11+5=16;16+9=25", "25") and st.parse("25") == ("", "25")
    assert st.rationale_ok(p, p.rationale)
    assert not st.rationale_ok(p, "3+8=11;11+5=15;15+9=24")  # a wrong step
    assert not st.rationale_ok(p, "3+8=11;11+9=20;20+5=25")  # right total, terms out of order
    assert not st.rationale_ok(p, "3+8=11;11+5=16")  # a step missing
    assert not st.rationale_ok(p, "3+8=11;garbage")
    assert st.accuracy(["25", "7"], [p, st.Problem((3, 5))]) == 0.5
    q = st.Problem((37, 48, 19))  # two-digit terms: carries in both steps
    assert (q.prompt, q.response) == ("Q:37+48+19=", "37+48=85;85+19=104;A:104")
    assert st.rationale_ok(q, "37+48=85;85+19=104") and not st.rationale_ok(q, "37+48=75;75+19=94")


def test_splits_are_disjoint_complete_and_seeded():
    train, test = st.problems(3)
    assert len(test) == 200 and len(train) == 800
    assert not {p.terms for p in train} & {p.terms for p in test}
    assert st.problems(3)[1] == test and st.problems(3, seed=1)[1] != test
    with pytest.raises(ValueError, match="n-terms"):
        st.problems(7)
    train2, test2 = st.problems(3, digits=2)  # 90**3 problems: a seeded sample of distinct ones
    assert len(train2) + len(test2) == st.POOL and len(test2) == 1000
    assert len({p.terms for p in train2 + test2}) == st.POOL
    assert all(10 <= t <= 99 for p in test2 for t in p.terms) and st.problems(3, digits=2)[1] == test2


def test_encoding_and_loss_mask():
    ids, mask = st.sequence("Q:1+2=", "1+2=3;A:3", prefix=st.LABEL)
    assert ids[:2] == [st.BOS, st.LABEL] and ids[-1] == st.EOS
    assert st.decode(ids) == "Q:1+2=1+2=3;A:3"
    assert sum(mask) == len("1+2=3;A:3") + 1 and mask[: 2 + len("Q:1+2=")] == [0] * 8
    b = st.batch([(ids, mask), st.sequence("Q:1+2=", "3")])
    assert b["input_ids"].shape == (2, len(ids)) and b["attention_mask"][1].sum() == len("Q:1+2=") + 3
    assert (b["labels"] != -100).sum() == sum(mask) + 2


@pytest.fixture(scope="module")
def small_teacher(tmp_path_factory):
    os.environ["ATLAS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield st.teacher(SMALL)
    finally:
        os.environ.pop("ATLAS_CACHE")


def test_teacher_learns_the_task_far_above_the_trivial_baseline(small_teacher):
    model, figures = small_teacher
    train, test = st.problems(SMALL.n_terms)
    labels = [p.label for p in train]
    majority = max(labels.count(y) for y in set(labels)) / len(labels)  # always answer the commonest sum
    assert majority < 0.12
    assert figures["teacher_accuracy"] > 0.5 > 3 * majority
    # graded again here, from its generations, rather than trusting the cached figure
    answers = st.generate(model, [p.prompt for p in test])
    assert st.accuracy([st.parse(a)[1] for a in answers], test) == figures["teacher_accuracy"]
    again, _ = st.teacher(SMALL)  # from the cache: the same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                 strict=True))


def test_a_damaged_teacher_cache_is_rebuilt_not_a_traceback(small_teacher):
    model, figures = small_teacher
    path = st.cache_dir() / f"teacher-{SMALL.key()}"
    (path / "figures.json").unlink()  # as a Ctrl-C between the two writes used to leave it
    again, refigured = st.teacher(SMALL)  # trained again, deterministically
    assert refigured["teacher_accuracy"] == figures["teacher_accuracy"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                 strict=True))
    assert sorted(p.name for p in path.iterdir()) == ["figures.json", "model.pt"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary folder left


class FakeCtx:
    seed = 0


def test_the_student_sees_only_teacher_outputs(small_teacher, monkeypatch):
    """Replace the teacher's generations with wrong answers: every target the student is given is
    the teacher's text, never the gold label or rationale."""
    monkeypatch.setattr(st, "teacher", lambda spec: small_teacher)

    def wrong(model, prompts, **_):
        return [f"9+9=18;A:{len(q) + 50}" for q in prompts]

    monkeypatch.setattr(st, "generate", wrong)
    opts = dict(_blackbox.OPTIONS_DEFAULTS, n_terms=3, n_train=40)
    setup = _blackbox.prepare(FakeCtx(), **opts)
    gold = {p.prompt: p for p in st.problems(3)[0]}
    assert all(q in gold for q in setup.data.prompts)  # inputs: train split only
    label_rows, rationale_rows = step_by_step.task_rows(setup.data)
    sft = instruct_distill.sft_rows(setup.data)
    rows = zip(setup.data.prompts, label_rows, rationale_rows, sft, strict=True)
    for q, (ids, mask), (rids, rmask), (sids, smask) in rows:
        target = st.decode([t for t, m in zip(ids, mask, strict=True) if m])
        assert target == str(len(q) + 50) != gold[q].label
        assert st.decode([t for t, m in zip(rids, rmask, strict=True) if m]) == "9+9=18"
        assert st.decode([t for t, m in zip(sids, smask, strict=True) if m]) == f"9+9=18;A:{len(q) + 50}"


def test_step_by_step_loss_is_label_plus_lambda_rationale_with_prefixes():
    model = st.make_model(layers=1, hidden=32, seed=0)
    data = _blackbox.TeacherData(["Q:1+2=", "Q:4+9="], ["1+2=3;A:3", "4+9=13;A:13"])
    label_rows, rationale_rows = step_by_step.task_rows(data)
    assert [r[0][1] for r in label_rows] == [st.LABEL] * 2
    assert [r[0][1] for r in rationale_rows] == [st.RATIONALE] * 2
    lb, rb = st.batch(label_rows), st.batch(rationale_rows)
    total, label_loss, rationale_loss = step_by_step.step_by_step_loss(model, lb, rb, rationale_weight=0.3)
    # the two task losses by hand: mean cross-entropy of each task's target tokens
    for b, loss in ((lb, label_loss), (rb, rationale_loss)):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        y = b["labels"][:, 1:]
        ref = torch.nn.functional.cross_entropy(logits[y != -100], y[y != -100])
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert total.item() == pytest.approx(label_loss.item() + 0.3 * rationale_loss.item(), rel=1e-6)
    assert rationale_loss.item() != pytest.approx(label_loss.item())  # different targets, different losses


def test_results_rank_task_accuracy_higher_is_better_and_hide_the_untouched_perplexity():
    m = {"perplexity": 45.4, "perplexity_fp": 45.4, "task_accuracy": 0.6, "task_accuracy_teacher": 0.9,
         "task_accuracy_baseline": 0.3}
    run = Run(method="step-by-step", family="distillation", model="causal", options={}, metrics=m)
    assert run.quality == ("task accuracy (exact match)", 0.6, 0.9)
    assert run.higher_is_better and run.perplexity is None
    gptq = Run(method="gptq", family="quantization", model="causal", options={},
               metrics=dict(m, task_accuracy=None))
    assert gptq.quality[0] == "held-out perplexity" and not gptq.higher_is_better and gptq.perplexity == 45.4
    from catalog.site_results import _rank

    worse = Run(method="x", family="distillation", model="causal", options={},
                metrics=dict(m, task_accuracy=0.2))
    assert sorted([worse, run], key=_rank) == [run, worse]


def test_bad_options_fail_with_the_option_name():
    opts = dict(_blackbox.OPTIONS_DEFAULTS)
    with pytest.raises(ValueError, match="--student-hidden"):
        _blackbox.check_options(**dict(opts, student_hidden=48))
    with pytest.raises(ValueError, match="--n-terms"):
        _blackbox.check_options(**dict(opts, n_terms=9))
    with pytest.raises(ValueError, match="--digits"):
        _blackbox.check_options(**dict(opts, digits=3))


@pytest.mark.slow
def test_atlas_run_step_by_step_end_to_end(tmp_path):
    env = dict(os.environ, ATLAS_CACHE=str(tmp_path), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    atlas = str(Path(sys.executable).with_name("atlas"))
    cmd = [atlas, "run", "step-by-step", "--json", "--eval-windows", "2",
           "--n-terms", "2", "--teacher-layers", "1", "--teacher-hidden", "64", "--teacher-steps", "60",
           "--student-layers", "1", "--student-hidden", "32", "--n-train", "64", "--max-steps", "20"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=True).stdout
    wall = time.perf_counter() - t0
    rec = json.loads(out[out.index("{"):])
    m = rec["metrics"]
    # the start-up the record reports (process start → compression) fits inside the process's wall time
    assert 0.1 < rec["env"]["process_age_s"] < wall - rec["time_s"]
    assert m["distill_steps"] == m["baseline_steps"] == 20
    for key in ("task_accuracy", "task_accuracy_baseline", "task_accuracy_teacher"):
        assert 0 <= m[key] <= 1
    assert m["student_params"] < m["teacher_params"] and m["transfer_examples"] == 64
    assert m["distill_loss_last"] < m["distill_loss_first"]
