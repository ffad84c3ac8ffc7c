"""Run llm-compressor on given calibration tokens; executed by the peer's own venv (not tensorpress's).

    llmc-venv/bin/python llmc_run.py MODEL CALIB.pt OUT --method gptq|rtn --bits 4 --group-size 64

Loads the model in float32 (its fastest path on a CPU without bf16 instructions), runs `oneshot` with
one config group (int, symmetric, group strategy) on every Linear but lm_head, casts to the model's
stored dtype and saves compressed (pack-quantized). Prints one JSON line with the timings.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("calib")
    ap.add_argument("out")
    ap.add_argument("--method", choices=["gptq", "rtn"], required=True)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    stored_dtype = torch.bfloat16
    groups = {
        "group_0": {
            "targets": ["Linear"],
            "weights": {
                "num_bits": args.bits,
                "type": "int",
                "symmetric": True,
                "strategy": "group",
                "group_size": args.group_size,
            },
        }
    }
    t1 = time.perf_counter()
    if args.method == "gptq":
        ids = torch.load(args.calib)  # (N, L) int64, the very windows tensorpress calibrates on
        ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
        recipe = GPTQModifier(
            config_groups=groups, ignore=["lm_head"], actorder="static", block_size=128, dampening_frac=0.01
        )
        kwargs = dict(dataset=ds, num_calibration_samples=len(ids), max_seq_length=ids.shape[1])
        try:
            oneshot(model=model, recipe=recipe, batch_size=args.batch_size, **kwargs)
        except TypeError:  # older versions without batch_size
            oneshot(model=model, recipe=recipe, **kwargs)
    else:
        oneshot(model=model, recipe=QuantizationModifier(config_groups=groups, ignore=["lm_head"]))
    t2 = time.perf_counter()
    model.to(stored_dtype)
    model.save_pretrained(args.out, save_compressed=True)
    tokenizer.save_pretrained(args.out)
    t3 = time.perf_counter()
    print(json.dumps({"load": t1 - t0, "oneshot": t2 - t1, "save": t3 - t2, "total": t3 - t0}))


if __name__ == "__main__":
    main()
