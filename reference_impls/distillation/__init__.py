"""Knowledge distillation: a smaller student trained to match a teacher — on its logits (KD, SeqKD,
MiniLLM, GKD, DistiLLM), on its internals (DistilBERT, TinyBERT, MiniLM), or on its generated outputs
only (black-box). The divergences are pure functions in `losses.py`; the loop is `common/training.py`."""
