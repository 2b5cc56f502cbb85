"""LLMLingua: the package's token-level loop traced by hand on a bigram LM, its indexing convention,
its window plan and budget controller (transcribed from llmlingua 0.2.2, prompt_compressor.py)."""

import torch

from reference_impls.prompt.llmlingua import (
    budget_controller,
    chunk_ratios,
    iterative_compress,
    official_threshold,
    segment_spans,
)

BIGRAM = torch.full((6, 6), 9.0)  # surprisal of token b right after token a; 9 = never used
for (a, b), s in {(0, 1): 5.0, (1, 2): 0.1, (2, 3): 0.2, (3, 4): 4.5, (4, 5): 3.0, (0, 2): 1.0}.items():
    BIGRAM[a, b] = s


def bigram_score(ids):
    return BIGRAM[ids[:-1], ids[1:]]


def test_window_plan_hand_computed():
    # get_dynamic_compression_ratio counts from 1: windows of 2, 3 and the 1-token remainder; τ = 4/7
    tau = 4 / 7
    assert chunk_ratios([6], target_token=4, iterative_size=3, dynamic_ratio=[0.0]) == [
        [(2, tau)], [(3, tau)], [(1, tau)]]


def test_threshold_is_rank_int_len_ratio_minus_one():
    scores = torch.tensor([5.0, 0.1, 0.2, 4.5, 3.0])
    assert official_threshold(scores, 4 / 7) == 4.5  # int(5·4/7) − 1 = 1 → second largest
    assert official_threshold(scores, 0.1) == 5.0  # clamped at rank 0
    assert official_threshold(scores, 1.0) == float("-inf")


def test_iterative_compression_bigram_hand_trace():
    ids = torch.arange(6)
    plan = chunk_ratios([6], target_token=4, iterative_size=3, dynamic_ratio=[0.0])
    # pass 0: scores of tokens 1..5 = [5, .1, .2, 4.5, 3]; threshold 4.5; window [0, 2): token 0 stays
    #   (token 1's surprisal 5 > 4.5), token 1 goes (token 2's 0.1). Scores left: [5, .2, 4.5, 3].
    # pass 1: text 0 2 3 4 5 re-scored on its first 4 tokens: [s(2|0)=1, .2, 4.5] + stale [3];
    #   threshold rank int(4·4/7) − 1 = 1 of [4.5, 3, 1, .2] → 3; window = tokens 2, 3, 4:
    #   2 goes (.2), 3 stays (4.5), 4 goes (3 is not > 3). The last token is always kept.
    keep = iterative_compress(ids, bigram_score, plan=plan, iterative_size=3)
    assert keep.tolist() == [0, 3, 5]


def test_token_is_judged_by_the_surprisal_of_the_next_token():
    # DESIGN §6 / get_compressed_input: need_idx[i] = loss[i] > threshold, loss[i] = CE of token i+1.
    # Token 1 is the most surprising token of the text (5.0) yet it is dropped, because token 2 after
    # it is predictable (0.1); under the paper's own-surprisal reading it would be the first one kept.
    ids = torch.arange(6)
    plan = [[(5, 0.5)]]  # one window over tokens 0..4 at ratio 0.5
    keep = iterative_compress(ids, bigram_score, plan=plan, iterative_size=5)
    # threshold: rank int(5·0.5) − 1 = 1 of [5, 4.5, 3, .2, .1] → 4.5; kept: token 0 (5 > 4.5), token 5
    assert keep.tolist() == [0, 5]


def test_budget_controller_keeps_the_crossing_segment():
    # target 10 + budget 2 = 12: visit by perplexity 9 (len 5, 7 left), 7 (len 6, 1 left), 3 (len 4, −3:
    # kept, then stop); segment 1 (perplexity 1) is dropped
    order = budget_controller([9.0, 1.0, 7.0, 3.0], [5, 8, 6, 4], target_token=10, context_budget=2)
    assert order == [0, 2, 3]
    ascending = budget_controller([9.0, 1.0, 7.0, 3.0], [5, 8, 6, 4], target_token=10, context_budget=2,
                                  descending=False)
    # LongLLMLingua: lowest question perplexity first: 1 (len 8, 4 left), 3 (len 4, 0 left: the package
    # stops only below 0), 2 (len 6, −6: kept, stop)
    assert ascending == [1, 3, 2]


def test_segments_are_blank_line_blocks():
    pieces = ["def", " f", "():", "\n", "    pass", "\n\n", "x", " =", " 1", "\n"]
    assert segment_spans(pieces, max_tokens=32) == [(0, 6), (6, 10)]
    assert segment_spans(pieces, max_tokens=3) == [(0, 4), (4, 6), (6, 10)]
