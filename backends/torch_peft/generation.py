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


@torch.no_grad()
def generate_batch_tokens(
    model: torch.nn.Module,
    prompts: list[list[int]],
    device: torch.device,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    stop_ids: tuple[int, ...],
    pad_id: int,
) -> list[list[int]]:
    """``generate_tokens`` for several prompts at once: left padding, an attention mask that
    hides it and position ids that start at each prompt's first real token, so every row sees
    what it would see alone (greedy rows equal one-at-a-time generation); one KV cache for all.
    Each row samples from its own generator seeded ``seed``, as it would alone. A finished row
    keeps a pad token in its slot until every row is done."""
    if any(not p for p in prompts):
        raise ValueError("generate needs at least one prompt token")
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    generators = [torch.Generator(device="cpu").manual_seed(seed) for _ in prompts]
    stop = set(stop_ids)
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    for _ in range(max_new_tokens):
        step = []
        for row, logits in enumerate(out.logits[:, -1]):
            token = pad_id if done[row] else pick_token(logits, temperature, top_p, generators[row])
            if not done[row]:
                if token in stop:
                    done[row], token = True, pad_id
                else:
                    new[row].append(token)
                    done[row] = len(new[row]) == max_new_tokens
            step.append(token)
        if all(done):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        ids = torch.tensor(step, dtype=torch.long, device=device)[:, None]
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{cache_arg: out[cache_arg]},
        )
    return new
