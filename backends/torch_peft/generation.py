"""Token-by-token generation with a KV cache, sampled from a generator seeded per call.

A plain loop rather than ``model.generate``: sampling draws from a dedicated CPU generator, so
the same seed gives the same text on CPU and GPU, and the training RNG is left untouched.
"""

from __future__ import annotations

import inspect

import torch


def pick_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Greedy when temperature is 0; otherwise nucleus sampling over fp32 probabilities."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs[before >= top_p] = 0.0  # keeps the most likely token at least
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate_tokens(
    model: torch.nn.Module,
    prompt_ids: list[int],
    device: torch.device,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    stop_ids: tuple[int, ...],
) -> list[int]:
    """New tokens after ``prompt_ids``; a stop token ends generation and is not returned.
    ``model`` is the transformers causal LM (with peft's LoRA layers inside it)."""
    # transformers 5.2x renamed past_key_values to cache; ask the signature which one it takes.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    if not prompt_ids:
        raise ValueError("generate needs at least one prompt token")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    stop = set(stop_ids)
    new: list[int] = []
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    for _ in range(max_new_tokens):
        token = pick_token(out.logits[0, -1], temperature, top_p, generator)
        if token in stop:
            break
        new.append(token)
        if len(new) == max_new_tokens:
            break
        ids = torch.tensor([[token]], dtype=torch.long, device=device)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_arg: out[cache_arg]})
    return new
