"""Peak RSS of `tensorpress compress` (RTN w4 g64) on synthetic Llama checkpoints of ~0.3B and ~1.5B.

Random bf16 weights in sharded safetensors (written once into the cache). Target: under 1.5 GB for
the 1.5B checkpoint, and growing by less than 0.25 GB per extra GB of checkpoint.

    python benchmarks/memory.py [--sizes 0.3 1.5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from tensorpress.formats.safetensors_io import ShardWriter
from tensorpress.infra.cache import cache_dir

SHAPES = {  # name: (hidden, intermediate, layers, vocab)
    "0.3": (1024, 2816, 24, 32000),
    "1.5": (2048, 5632, 28, 32000),
}


def synthetic_llama(folder: Path, size: str) -> Path:
    hidden, inter, layers, vocab = SHAPES[size]
    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    w = ShardWriter(folder, max_shard_bytes=1 << 30, metadata={"format": "pt"})
    w.add("model.embed_tokens.weight", rnd(vocab, hidden))
    for i in range(layers):
        p = f"model.layers.{i}."
        for name, shape in {
            "self_attn.q_proj": (hidden, hidden),
            "self_attn.k_proj": (hidden, hidden),
            "self_attn.v_proj": (hidden, hidden),
            "self_attn.o_proj": (hidden, hidden),
            "mlp.gate_proj": (inter, hidden),
            "mlp.up_proj": (inter, hidden),
            "mlp.down_proj": (hidden, inter),
        }.items():
            w.add(f"{p}{name}.weight", rnd(*shape))
        w.add(f"{p}input_layernorm.weight", torch.ones(hidden, dtype=torch.bfloat16))
        w.add(f"{p}post_attention_layernorm.weight", torch.ones(hidden, dtype=torch.bfloat16))
    w.add("model.norm.weight", torch.ones(hidden, dtype=torch.bfloat16))
    w.add("lm_head.weight", rnd(vocab, hidden))
    w.close()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // 64,
        "num_key_value_heads": hidden // 64,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def peak_rss_of(cmd: list[str]) -> tuple[int, float]:
    """Run cmd in a fresh child interpreter that reports the peak RSS of its own child."""
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "rc = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, time.perf_counter() - t, rc)"
    )
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=True)
    rss, secs, rc = out.stdout.split()[-3:]
    if rc != "0":
        raise SystemExit(f"compress failed: {out.stderr}")
    return int(rss), float(secs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["0.3", "1.5"], choices=sorted(SHAPES))
    ap.add_argument("--workdir", type=Path, default=cache_dir() / "bench" / "memory")
    args = ap.parse_args()
    tp = str(Path(sys.executable).with_name("tensorpress"))
    rows = []
    for size in args.sizes:
        model = synthetic_llama(args.workdir / f"llama-{size}b", size)
        ckpt_bytes = sum(p.stat().st_size for p in model.glob("*.safetensors"))
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            rss, secs = peak_rss_of([tp, "compress", str(model), "--recipe", "rtn-w4g64", "--out", f"{tmp}/o", "-q"])
        rows.append((size, ckpt_bytes, rss, secs))
    print(f"{'model':>8} {'checkpoint GB':>14} {'peak RSS GB':>12} {'seconds':>8}")
    for size, ckpt, rss, secs in rows:
        print(f"{size + 'B':>8} {ckpt / 1e9:>14.2f} {rss / 1e9:>12.3f} {secs:>8.1f}")
    if len(rows) >= 2:
        (_, c0, r0, _), (_, c1, r1, _) = rows[0], rows[-1]
        slope = (r1 - r0) / (c1 - c0)
        print(f"growth: {slope:.3f} GB of RSS per extra GB of checkpoint (target < 0.25)")
        print(f"largest: {r1 / 1e9:.3f} GB peak RSS (target < 1.5 GB for ~1.5B)")


if __name__ == "__main__":
    main()
