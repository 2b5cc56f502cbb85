"""Low-rank factorization: truncated SVD and its activation-, Fisher- and truncation-aware variants
(FWSVD, ASVD, SVD-LLM), low-rank plus sparse (LoSparse), low-rank compensation of a quantized weight
(LoRC), and tensor-train decomposition of the token embedding (TensorGPT). A compressed (out, in)
linear is stored as two factors of rank k, k·(out + in) values instead of out·in; the model computes
with their product, and the storage ledger records the factors."""
