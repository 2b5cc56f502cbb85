"""LongLLMLingua: dynamic ratios against the package's expression, question-perplexity and contrastive
indexing on fake LMs whose surprisals are known."""

import pytest
import torch

from reference_impls.prompt.longllmlingua import contrastive_score, dynamic_ratios, question_perplexity


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_dynamic_ratios_match_the_package_expression(n):
    delta = 0.3
    # llmlingua 0.2.2, control_context_budget, transcribed: offsets by rank (best first)
    official = [i * (abs(delta) / (n - 1)) if n > 1 else 0 for i in range(-(n - 1), n, 2)][::-1]
    assert dynamic_ratios(n, delta=delta) == pytest.approx(official)


def position_lm(ids):
    """Surprisal of token t+1 = its id / 10: known values for indexing checks."""
    return ids[1:].float() / 10


def test_question_perplexity_scores_only_the_question_tokens():
    doc, question = torch.tensor([1, 2, 3]), torch.tensor([7, 9])
    # get_condition_ppl(..., "after"): loss[len(doc) − 1:] = surprisal of 7 and of 9 → mean 0.8
    assert question_perplexity(position_lm, doc, question) == pytest.approx(0.8)


def question_aware_lm(ids):
    """Surprisal 2 for each next token, 1 once token 9 (the question) has been seen."""
    seen = torch.cumsum(ids == 9, 0)[:-1] > 0  # (n−1,): question among ids[:t+1]
    return torch.where(seen, 1.0, 2.0)


def test_contrastive_score_is_the_drop_in_surprisal_from_the_question():
    ids = torch.tensor([1, 2, 3, 4])
    score = contrastive_score(question_aware_lm, torch.tensor([9]))(ids)
    assert score.tolist() == [1.0, 1.0, 1.0]  # (n−1,): token t+1 without vs with the question
    assert contrastive_score(question_aware_lm, torch.tensor([5]))(ids).tolist() == [0.0, 0.0, 0.0]
