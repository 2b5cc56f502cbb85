"""Parameter-efficient finetuning on quantized weights: LoRA, DoRA and AdaLoRA through `peft`, QLoRA
(the project's NF4 base), LoftQ (quantization-aware low-rank initialisation) and QA-LoRA (group-wise
adapters that merge into the quantized weights)."""
