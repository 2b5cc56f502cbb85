"""Prompt compression: methods that shorten the *input* (drop context tokens a small LM finds predictable)
instead of compressing the model. Measured on held-out text by `common.prompt_eval`: a 256-token window
is split into a context and a continuation, the method compresses the context, and the continuation's
perplexity and next-token KL after the compressed context are compared with the full context and with
no context; the prompt's KV cache shrinks with it."""
