"""Greedy continuations of three fixed prompts, so a person sees at a glance whether the model still speaks.

Greedy decoding with the model's own KV cache: deterministic and cheap for ~32 tokens. Base and
compressed run the same prompts with the same tokenizer.
"""

from __future__ import annotations

import torch

PROMPTS = (
    "The capital of France is",
    "In the beginning God created the heaven and the earth. And the earth was",
    "Here is a short list of tips for staying healthy:",
)
NEW_TOKENS = 32


def greedy_continuations(
    model, tokenizer, prompts: tuple[str, ...] = PROMPTS, new_tokens: int | None = None, device: str = "cpu"
) -> list[str]:
    """The greedy continuation (new text only) of each prompt; stops early at the end-of-sequence token."""
    new_tokens = NEW_TOKENS if new_tokens is None else new_tokens
    vocab = model.config.vocab_size
    eos = tokenizer.eos_token_id
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)  # (1, P)
        new: list[int] = []
        past = None
        with torch.no_grad():
            for _ in range(new_tokens):
                res = model(input_ids=ids, past_key_values=past, use_cache=True)
                past = res.past_key_values
                nxt = int(res.logits[0, -1].float().argmax())  # logits (1, P or 1, V)
                if nxt == eos:
                    break
                new.append(nxt)
                ids = torch.tensor([[nxt]], device=device)
        # Ids past the tokenizer (a padded vocab) have no text; skip them rather than fail.
        known = [t for t in new if t < min(vocab, len(tokenizer))]
        out.append(tokenizer.decode(known, skip_special_tokens=True))
    return out


def continuation_table(compressed: list[str], base: list[str] | None, prompts=PROMPTS) -> list[dict]:
    """[{prompt, base, compressed}] as stored in report.json."""
    return [
        {"prompt": p, "base": None if base is None else base[i], "compressed": compressed[i]}
        for i, p in enumerate(prompts)
    ]
