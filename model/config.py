"""The model's configuration as dataclasses, saved as JSON beside every checkpoint.

One config object describes the whole model, so that a checkpoint directory is self-describing:
the build, the serving backends and evaluation rebuild the exact model from ``config.json``.
:func:`from_dict` is the strict loader of every nested config here (and of training's): types are
checked field by field (``"80"`` is not an ``int``), unknown keys are refused.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dacite
from mambaserve.contract.spec import SAMPLE_RATE

T = TypeVar("T")


def _int_to_float(value: Any) -> Any:
    """YAML and JSON write 50 for 50.0: an int is a fine float (a bool or a string is not)."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


STRICT = dacite.Config(strict=True, cast=[tuple], type_hooks={float: _int_to_float})
"""Unknown keys are errors, every value must have its field's type (ints widen to floats, lists
become tuples where a tuple is declared)."""


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """A (nested) config dataclass from plain data; ValueError naming the field that does not fit."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping of config keys, got {type(data).__name__}")
    try:
        return dacite.from_dict(cls, data, config=STRICT)
    except dacite.DaciteError as e:
        raise ValueError(f"{cls.__name__}: {e}") from None


@dataclass
class FeatureConfig:
    """Log-mel features: 25 ms windows every 10 ms, no centring (so streaming is frame-exact)."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 20.0
    f_max: float = 7600.0
    log_floor: float = 1e-6


@dataclass
class MambaConfig:
    """A stack of Mamba-1 blocks (the selective-scan variant our kernels implement)."""

    d_model: int = 160
    n_layers: int = 6
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_min: float = 1e-3
    dt_max: float = 1e-1

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank(self) -> int:
        return max(1, -(-self.d_model // 16))


@dataclass
class EncoderConfig:
    """Causal encoder: stack ``subsampling`` feature frames, project, then Mamba blocks.

    ``frontend="conv"`` projects each stack with two small 2-D convolutions over (time within the
    stack, frequency): weight sharing across frequency copes with pitch and voice shifts, and since
    the kernels never cross a stack border, streaming needs no extra carried state.
    """

    subsampling: int = 4
    mamba: MambaConfig = field(default_factory=MambaConfig)
    dropout: float = 0.1
    frontend: str = "linear"  # "linear" | "conv": how one stack of frames becomes a vector
    frontend_channels: int = 32


@dataclass
class BridgeConfig:
    """Encoder frames -> decoder prefix.

    ``stride``: concatenate ``stride`` consecutive frames and project (causal, streaming-friendly).
    ``perceiver``: ``n_latents`` learned queries cross-attend to all frames (fixed-length prefix).
    """

    kind: str = "stride"
    stride: int = 2
    n_latents: int = 32
    n_heads: int = 4
    n_layers: int = 2


@dataclass
class DecoderConfig:
    """Mamba language model over [audio prefix][prompt][BOS] transcript [EOS]."""

    mamba: MambaConfig = field(default_factory=lambda: MambaConfig(d_model=192, n_layers=4))
    dropout: float = 0.1


@dataclass
class DecodingConfig:
    """How transcripts are produced by default (overridable per call)."""

    method: str = "greedy"  # "greedy" | "beam" | "ctc_lm" (needs lm.arpa.gz + lexicon.txt beside the weights)
    beam_size: int = 4
    ctc_weight: float = 0.0  # >0: joint CTC/decoder scoring in beam search
    length_penalty: float = 0.0
    max_tokens_per_second: float = 12.0
    min_tokens: int = 4
    # ctc_lm: the lexicon + n-gram search (mambaserve.model.lexicon_search), tuned on dev
    lm_beam_size: int = 32
    lm_weight: float = 1.0
    word_score: float = 0.0
    hotword_lookahead: float = 6.0


@dataclass
class ModelConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    vocab_size: int = 256
    blank_id: int = 0
    bos_id: int = 2
    eos_id: int = 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return from_dict(cls, data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
