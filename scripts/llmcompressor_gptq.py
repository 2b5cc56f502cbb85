"""llmcompressor's one-shot GPTQ on the project's causal LM, for `atlas bench perf` to compare with ours.

Runs in its own environment (`make llmcompressor` → `.venv-llmcompressor`: llmcompressor 0.14 pins
transformers<=5.17, older than the project's), so it imports nothing from this repository.

    python scripts/llmcompressor_gptq.py MODEL_DIR CALIB.safetensors OUT.safetensors

CALIB holds `input_ids` (n, seq): the very calibration windows our GPTQ uses. The recipe is W4A16
(4-bit symmetric integer weights, groups of 128, static activation order), dampening 0.01, blocks of
128 columns, every Linear but the output head. OUT receives each quantized Linear's weight, which
llmcompressor leaves de-quantized in place (its forward is F.linear with that weight). One JSON line
on stdout: the seconds `oneshot` took and the versions.
"""

import json
import sys
import time

import torch
from safetensors.torch import load_file, save_file


def main(model_dir: str, calib: str, out: str) -> None:
    import compressed_tensors
    import llmcompressor
    import transformers
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier

    ids = load_file(calib)["input_ids"]
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    recipe = GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"], dampening_frac=0.01,
                          block_size=128, actorder="static")
    t0 = time.perf_counter()
    # in our order (oneshot shuffles by default: the same samples, but its result then moved by 0.1%
    # in perplexity between two runs)
    oneshot(model=model, dataset=data, recipe=recipe, max_seq_length=ids.shape[1],
            num_calibration_samples=ids.shape[0], shuffle_calibration_samples=False)
    seconds = time.perf_counter() - t0
    weights = {f"{name}.weight": module.weight.detach().contiguous()
               for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and hasattr(module, "weight_scale")}
    save_file(weights, out)
    print(json.dumps({"oneshot_s": seconds, "layers": len(weights),
                      "llmcompressor": llmcompressor.__version__,
                      "compressed_tensors": compressed_tensors.__version__,
                      "transformers": transformers.__version__, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: llmcompressor_gptq.py MODEL_DIR CALIB.safetensors OUT.safetensors")
    main(*sys.argv[1:])
