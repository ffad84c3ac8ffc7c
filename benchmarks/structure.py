"""Structural compressors on the sample model, in one run, against the same base evaluation.

magnitude / Wanda / SparseGPT at 50% unstructured and at 2:4 (+ Wanda 50% with OWL layer sparsities,
and Wanda / SparseGPT pruned true-sequentially); plain vs whitened SVD at 80% of Linear parameters;
joint SparseGPT-50% + GPTQ-w4 against GPTQ-w3 g64; GPTQ-w3 g64 (default settings, and the shipped
recipe's MSE group ranges) with and without EoRA. Calibration 128×512 from kjv:calib, evaluation 48×512 on kjv:eval;
the base model's logits are computed once and cached on disk for every method.

    nice -n 10 python benchmarks/structure.py [--samples 128] [--windows 48] [--only wanda-50,...]

Prints ppl, KL, top-1, bits per weight (codes, scales, zeros, masks, indices, values, factors —
everything the compressed Linears store), file bytes and compression seconds per method, and checks
that a 50% bitmask BF16 layer takes ≤ 57% of its dense bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import tensorpress
from tensorpress.calibration.windows import eval_windows, load_tokenizer
from tensorpress.evaluation.metrics import BaseReference, evaluate_tokens, token_nll
from tensorpress.formats.safetensors_io import read_header, weight_files
from tensorpress.formats.sizes import size_stats
from tensorpress.model.sample import ensure_sample

IGNORE = {"ignore": ["lm_head"]}


def methods() -> dict[str, list[dict]]:
    def prune(method: str, **kw) -> list[dict]:
        return [{"prune": {"method": method, **kw}, **IGNORE}]

    gptq3 = {"gptq": {"bits": 3, "group_size": 64}, **IGNORE}
    gptq3_mse = {"gptq": {"bits": 3, "group_size": 64, "actorder": "static", "mse_clip": True}, **IGNORE}
    eora = {"eora": {"rank": 32, "bits": 4, "group_size": 64}, **IGNORE}
    return {
        "magnitude-50": prune("magnitude", sparsity=0.5),
        "wanda-50": prune("wanda", sparsity=0.5),
        "sparsegpt-50": prune("sparsegpt", sparsity=0.5),
        "svd-plain-r80": [{"svd": {"method": "plain", "ratio": 0.8}, **IGNORE}],
        "svd-whitened-r80": [{"svd": {"method": "whitened", "ratio": 0.8}, **IGNORE}],
        "gptq-w3g64": [gptq3],
        "gptq-w3g64+eora-r32": [gptq3, eora],
        "gptq-w3g64-mse": [gptq3_mse],  # the shipped gptq-w3g64 recipe: static act-order, MSE group ranges
        "gptq-w3g64-mse+eora-r32": [gptq3_mse, eora],
        "sparsegpt-50+gptq-w4": [*prune("sparsegpt", sparsity=0.5), {"gptq": {"bits": 4, "group_size": 64}, **IGNORE}],
        "magnitude-2:4": prune("magnitude", pattern="2:4"),
        "wanda-2:4": prune("wanda", pattern="2:4"),
        "sparsegpt-2:4": prune("sparsegpt", pattern="2:4"),
        "wanda-50-owl": prune("wanda", sparsity=0.5, layerwise="owl"),
        # true-sequential: each stage pruned on inputs of the already pruned stages, in the one pass
        "wanda-50-seq": prune("wanda", sparsity=0.5, true_sequential=True),
        "sparsegpt-50-seq": prune("sparsegpt", sparsity=0.5, true_sequential=True),
    }


def layer_bytes_ratio(folder: Path, module: str) -> float:
    """Stored bytes of one module's weight tensors / its dense BF16 bytes."""
    infos = {}
    for f in weight_files(folder):
        infos.update(read_header(f)[0])
    parts = [i for n, i in infos.items() if n.startswith(module + ".weight_") and not n.endswith("_shape")]
    shape = infos.get(f"{module}.weight_values")
    if shape is None:
        return float("nan")
    from tensorpress.formats.safetensors_io import SafetensorsReader

    with SafetensorsReader(weight_files(folder)) as r:
        out_f, in_f = r.get(f"{module}.weight_shape").tolist()
    return sum(i.nbytes for i in parts) / (2 * out_f * in_f)


def in_method_order(rows: list[dict]) -> list[dict]:
    order = list(methods())
    return sorted(rows, key=lambda r: order.index(r["method"]) if r["method"] in order else len(order))


def base_metrics(ref: BaseReference, tokens) -> dict:
    """The base's own perplexity from its cached log-probs."""
    nll = sum(token_nll(ref.logp(i, i + 1), tokens[i : i + 1]) for i in range(len(tokens)))
    n = tokens.shape[0] * (tokens.shape[1] - 1)
    return {"ppl": math.exp(nll / n), "tokens": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=48)
    ap.add_argument("--only", default="", help="comma-separated method names")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (outputs, base-logit cache)")
    ap.add_argument(
        "--json", type=Path, default=None, help="also write the rows here; rows of other methods already in it are kept"
    )
    args = ap.parse_args()
    sample = ensure_sample()
    work = args.work or Path(tempfile.mkdtemp(prefix="tp-structure-"))
    cache = work / "base-logits"
    calib = {"text": "kjv:calib", "samples": args.samples, "seqlen": args.seqlen}
    tokens = eval_windows("kjv:eval", load_tokenizer(sample.model), args.windows, args.seqlen)
    todo = methods()
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    rows = []
    kept = []  # rows of methods not run now, from an earlier invocation against the same base
    if args.json and args.json.exists():
        kept = [r for r in json.loads(args.json.read_text())["rows"] if r["method"] not in todo]
    t0 = time.perf_counter()
    ref = BaseReference.compute(sample.model, tokens, cache / "base-logp.npy")  # the base runs once
    base = base_metrics(ref, tokens)
    base_s = time.perf_counter() - t0
    print(f"base: ppl {base['ppl']:.3f} on {base['tokens']} tokens; base logits cached in {base_s:.0f} s", flush=True)
    dense_bytes = size_stats(sample.model)["size_bytes"]
    for name, steps in todo.items():
        out = work / name.replace(":", "of").replace("+", "_")
        t = time.perf_counter()
        res = tensorpress.compress(sample.model, {"calibration": calib, "steps": steps}, out, force=True)
        secs = time.perf_counter() - t
        m = evaluate_tokens(out, ref, tokens)
        sz = size_stats(out)
        row = {
            "method": name,
            "ppl": m["ppl"],
            "kl": m["kl"],
            "top1": m["top1_agreement"],
            "bits_per_weight": sz["bits_per_weight"],
            "counted_bytes": sz["quantized_bytes"],
            "file_bytes": sz["size_bytes"],
            "seconds": secs,
            "notes": res.notes,
        }
        if name == "wanda-50":
            row["bitmask_layer_ratio"] = layer_bytes_ratio(out, "model.layers.0.mlp.down_proj")
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            doc = {"base": base, "dense_bytes": dense_bytes, "rows": in_method_order(kept + rows)}
            tmp = args.json.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, indent=2))
            tmp.replace(args.json)
        shutil.rmtree(out, ignore_errors=True)
    rows = in_method_order(kept + rows)  # the table shows earlier invocations' rows too
    print()
    print(f"SmolLM2-135M-Instruct, calib {args.samples}×{args.seqlen} kjv:calib, eval {args.windows}×{args.seqlen}")
    print(f"kjv:eval ({base['tokens']} tokens); base ppl {base['ppl']:.3f}, {dense_bytes / 2**20:.1f} MiB")
    print()
    print("| method | ppl | KL | top-1 | bits/weight | Linear bytes | file MiB | file/base | compress s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['ppl']:.3f} | {r['kl']:.4f} | {r['top1']:.2%} | {r['bits_per_weight']:.3f} | "
            f"{r['counted_bytes'] / 2**20:.2f} MiB | {r['file_bytes'] / 2**20:.2f} | "
            f"{r['file_bytes'] / dense_bytes:.3f} | {r['seconds']:.0f} |"
        )
    for r in rows:
        if "bitmask_layer_ratio" in r:
            print(
                f"\n50% bitmask BF16 layer (wanda-50, layers.0.mlp.down_proj): {r['bitmask_layer_ratio']:.2%} of dense"
            )
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
