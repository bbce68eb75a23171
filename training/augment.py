"""Training-time augmentation: SpecAugment on features and synthetic prompts for prompt biasing.

Both draw from the RNGs the training loop checkpoints (torch's and a ``random.Random``), so a
resumed run makes exactly the same choices.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SpecAugmentConfig:
    freq_masks: int = 2
    freq_width: int = 12
    time_masks: int = 2
    time_width_ratio: float = 0.04  # of each utterance's length
    probability: float = 0.8


def spec_augment(
    feats: Tensor, lengths: Tensor, config: SpecAugmentConfig, generator: torch.Generator | None = None
) -> Tensor:
    """Zero random frequency bands and time spans (normalised features: zero is the mean)."""
    feats = feats.clone()
    batch, _, bins = feats.shape
    for i in range(batch):
        if torch.rand((), generator=generator) > config.probability:
            continue
        for _ in range(config.freq_masks):
            width = int(torch.randint(0, config.freq_width + 1, (), generator=generator))
            start = int(torch.randint(0, max(1, bins - width), (), generator=generator))
            feats[i, :, start : start + width] = 0
        n = int(lengths[i])
        for _ in range(config.time_masks):
            width = int(
                torch.randint(0, max(1, int(n * config.time_width_ratio)) + 1, (), generator=generator)
            )
            start = int(torch.randint(0, max(1, n - width), (), generator=generator))
            feats[i, start : start + width] = 0
    return feats


def synthetic_prompt(text: str, distractor_pool: Sequence[str], rng: random.Random) -> str:
    """A hotword-style prompt: a few words of the utterance (longer words preferred) plus distractors.

    One prompt in four holds only distractors, so the model learns that a prompt is a hint, not a
    list of words to insert.
    """
    words = sorted(set(text.split()), key=lambda w: (-len(w), w))
    chosen: list[str] = []
    if words and rng.random() > 0.25:
        candidates = words[: max(3, len(words) // 2)]
        chosen = rng.sample(candidates, k=min(len(candidates), rng.randint(1, 3)))
    pool = [w for w in distractor_pool if w not in words]
    chosen += rng.sample(pool, k=min(len(pool), rng.randint(1, 3)))
    rng.shuffle(chosen)
    return ", ".join(chosen)
