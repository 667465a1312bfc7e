"""Reward sources. For now: a trained reward model as a scorer of (prompt, response) conversations, with the
normalisation statistics stored beside it by ``alignkit rm``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import ModelConfig
from .data.collate import pad_batch
from .data.formats import Conversation
from .data.templates import tokenize_conversation
from .models import load_reward_model, load_reward_stats, load_tokenizer, resolve_device, token_values
from .ops import gather_last


class RewardModelScorer:
    """A frozen reward model: ``score(prompts, responses)`` -> (N,) raw rewards; ``normalise`` applies the stored
    mean / std (1 / 0 when the folder has none)."""

    def __init__(self, path: str, device: str = "auto", max_length: int = 1024, dtype: str = "auto") -> None:
        cfg = ModelConfig(name_or_path=path, device=device, dtype=dtype)
        self.device = resolve_device(device)
        self.tokenizer = load_tokenizer(cfg)
        self.model = load_reward_model(cfg, self.tokenizer, self.device, trainable=False)
        self.stats = load_reward_stats(path) or {"mean": 0.0, "std": 1.0}
        self.max_length = max_length

    @torch.no_grad()
    def score(self, prompts: Sequence[Conversation], responses: Sequence[Conversation], batch_size: int = 32) -> torch.Tensor:
        out = []
        for start in range(0, len(prompts), batch_size):
            rows = [tokenize_conversation(self.tokenizer, p + r, first_trained=len(p), max_length=self.max_length)
                    for p, r in zip(prompts[start : start + batch_size], responses[start : start + batch_size])]
            batch = pad_batch(rows, self.tokenizer.pad_token_id).to(self.device)
            values = token_values(self.model, batch.input_ids, batch.attention_mask, batch.position_ids)
            out.append(gather_last(values, batch.attention_mask).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def normalise(self, rewards: torch.Tensor) -> torch.Tensor:
        return (rewards - self.stats["mean"]) / max(self.stats["std"], 1e-6)
