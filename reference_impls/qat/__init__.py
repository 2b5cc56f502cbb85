"""Quantization-aware training: the weights (and scales) are trained through the quantizer — the STE
baseline, LLM-QAT, EfficientQAT, PEQA and BitNet b1.58 — on the shared loop of `common/training.py`
and the grids of `common/qat.py`."""
