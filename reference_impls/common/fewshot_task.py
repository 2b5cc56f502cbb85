"""A few-shot synthetic task that needs in-context learning, and a small teacher that does it.

In-context-learning distillation (`distillation/icl_distill.py`) needs a task whose answer is identifiable
*only* from the demonstrations in the prompt, and a teacher that reads them. The arithmetic task of
`synthetic_task.py` can be solved from the query alone, so this module adds one over the same vocabulary
(`synthetic_task.encode` / `decode`, 21 ids) and the same small Llamas (`synthetic_task.make_model`):

- **task**: every prompt draws its own random *symbol mapping*, a permutation σ of the digits 0-9. The
  prompt shows `shots` demonstrations ``xσ(x);`` (input digit, output digit) on distinct inputs, then
  a query digit q, one of the demonstrated inputs; the answer is σ(q). Example (σ(3)=7, σ(5)=2,
  σ(8)=1): ``37;52;81;5`` → ``2``. Without reading the demonstrations the best guess is chance (1/10);
  a model that only knows the answer is one of the demonstrated outputs gets 1/shots; 100% needs
  matching the query to its demonstration and copying the output after it (an induction head).
  `FewShot`, `few_shot`.
- **split**: the held-out prompts use mappings that no training prompt uses (`held_out_mappings`: a seeded
  sample of distinct permutations; `draw_train_mapping` rejects them), so held-out accuracy measures
  in-context learning, not memorised mappings.
- **teacher**: a Llama trained from scratch on ground truth by *in-context tuning*: sequences of
  `pairs` demonstrations of one mapping on a few inputs drawn with repetition, the loss on every output
  digit (an output is predictable exactly when its input appeared before in the sequence), so one
  sequence holds many few-shot queries (`icl_sequence`). Cached under ``$ATLAS_CACHE/synthetic/`` keyed by
  every setting (`IclTeacherSpec`, `teacher`), seeded: rebuilt identically on the same machine.
- **grading**: greedy one-token answers of `synthetic_task.generate` (all prompts of one `shots` have the
  same length, so no padding) and exact match (`accuracy`).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass

from reference_impls.common import synthetic_task as st

DIGITS = 10
MAX_SHOTS = 9  # distinct demonstrated inputs, at least one digit left undemonstrated


@dataclass(frozen=True)
class FewShot:
    mapping: tuple[int, ...]  # σ: a permutation of 0-9, drawn for this prompt
    inputs: tuple[int, ...]  # the demonstrated inputs, distinct, in prompt order
    query: int  # one of `inputs`

    @property
    def prompt(self) -> str:
        return "".join(f"{x}{self.mapping[x]};" for x in self.inputs) + str(self.query)

    @property
    def label(self) -> str:
        return str(self.mapping[self.query])


def _permutation(rng: random.Random) -> tuple[int, ...]:
    values = list(range(DIGITS))
    rng.shuffle(values)
    return tuple(values)


def few_shot(mapping: tuple[int, ...], shots: int, rng: random.Random) -> FewShot:
    """A `shots`-shot prompt of `mapping`: distinct demonstrated inputs in random order, the query one of
    them (uniformly)."""
    if not 1 <= shots <= MAX_SHOTS:
        raise ValueError(f"--shots must be in 1..{MAX_SHOTS}, got {shots}")
    inputs = tuple(rng.sample(range(DIGITS), shots))
    return FewShot(mapping, inputs, rng.choice(inputs))


def held_out_mappings(n: int = 500, *, seed: int = 0) -> list[tuple[int, ...]]:
    """`n` distinct seeded permutations reserved for held-out prompts."""
    rng, out = random.Random(f"icl-test-{seed}"), {}
    while len(out) < n:
        out.setdefault(_permutation(rng), None)
    return list(out)


def draw_train_mapping(rng: random.Random, held_out: set) -> tuple[int, ...]:
    """A random permutation that is not one of the held-out mappings."""
    while (mapping := _permutation(rng)) in held_out:
        pass
    return mapping


def train_prompts(n: int, shots: int, *, seed: int, held_out: set) -> list[FewShot]:
    """`n` few-shot prompts, each with its own fresh mapping (never a held-out one)."""
    rng = random.Random(f"icl-train-{seed}")
    return [few_shot(draw_train_mapping(rng, held_out), shots, rng) for _ in range(n)]


def accuracy(answers: list[str], prompts: list[FewShot]) -> float:
    return sum(a == p.label for a, p in zip(answers, prompts, strict=True)) / len(prompts)


def icl_sequence(mapping: tuple[int, ...], inputs: list[int]) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of ``BOS x1σ(x1);x2σ(x2);…``: the mask is 1 on every output digit."""
    ids, mask = [st.BOS], [0]
    for x in inputs:
        ids += st.encode(f"{x}{mapping[x]};")
        mask += [0, 1, 0]
    return ids, mask


@dataclass(frozen=True)
class IclTeacherSpec:
    shots: int = 4  # the shots of the held-out prompts it is graded on
    layers: int = 2
    hidden: int = 128
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    pairs: int = 12  # demonstrations per in-context-tuning sequence
    n_sequences: int = 20_000
    n_test: int = 500
    seed: int = 0

    def key(self) -> str:
        """Every setting of the training (`shots` only sets the grading, so it is left out)."""
        settings = {k: v for k, v in asdict(self).items() if k != "shots"}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def test_prompts(self) -> list[FewShot]:
        rng = random.Random(f"icl-test-prompts-{self.seed}")
        return [few_shot(m, self.shots, rng) for m in held_out_mappings(self.n_test, seed=self.seed)]

    def rows(self) -> list[tuple[list[int], list[int]]]:
        """In-context-tuning sequences: each its own mapping, `pairs` inputs drawn with repetition from
        2-6 distinct digits, so later demonstrations repeat earlier inputs and are predictable."""
        rng = random.Random(f"icl-teacher-{self.seed}")
        held_out = set(held_out_mappings(self.n_test, seed=self.seed))
        rows = []
        for _ in range(self.n_sequences):
            mapping = draw_train_mapping(rng, held_out)
            support = rng.sample(range(DIGITS), rng.randint(2, 6))
            rows.append(icl_sequence(mapping, [rng.choice(support) for _ in range(self.pairs)]))
        return rows


def teacher(spec: IclTeacherSpec = IclTeacherSpec(), *, cache: bool = True) -> tuple[object, dict]:
    """(teacher, figures): in-context tuned on ground truth, or loaded from the cache. Figures:
    `teacher_accuracy` (held-out `shots`-shot prompts, unseen mappings; graded on every call, one
    teacher serves every `shots`), params, steps, training time."""
    path = st.cache_dir() / f"icl-teacher-{spec.key()}"
    model = st.make_model(layers=spec.layers, hidden=spec.hidden, seed=spec.seed)
    figures = st.load_cached(path, model) if cache and path.is_dir() else None
    if figures is None:
        model = st.make_model(layers=spec.layers, hidden=spec.hidden, seed=spec.seed)
        result = st.train_on(model, spec.rows(), steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr,
                             seed=spec.seed)
        figures = {"teacher_params": st.n_params(model), "teacher_layers": spec.layers,
                   "teacher_hidden": spec.hidden, "teacher_train_steps": result.steps,
                   "teacher_train_time_s": round(result.time_s, 2), "teacher_loss_last": result.losses[-1],
                   "teacher_spec": {k: v for k, v in asdict(spec).items() if k != "shots"}}
        if cache:
            st.save_cached(path, model, figures)
    model.eval()
    test = spec.test_prompts()
    answers = st.generate(model, [p.prompt for p in test], max_new_tokens=1)
    return model, dict(figures, teacher_accuracy=accuracy(answers, test))
