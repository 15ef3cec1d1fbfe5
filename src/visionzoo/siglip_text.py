"""SigLIP 2: the text tower, its tokenizer, and the image-text pair scored with a sigmoid.

Tschannen et al., 2025, "SigLIP 2: Multilingual Vision-Language Encoders with Improved Semantic
Understanding, Localization, and Dense Features"; the sigmoid loss is SigLIP's (Zhai et al., 2023,
"Sigmoid Loss for Language Image Pre-Training").

The text tower is a plain pre-norm transformer over Gemma's SentencePiece tokens (a 256k
vocabulary). Unlike CLIP's it attends in both directions and has no end-of-text pooling: texts
are padded to the full context (64 tokens) and the embedding is read at the last position, then
projected by a linear layer with a bias. The pair scores an image and a text on their own,
sigmoid(logit_scale * cos + logit_bias), so label probabilities need not sum to 1.

Module names follow open_clip's `TextTransformer` and `CustomTextCLIP` (`text.token_embedding`,
`text.transformer.resblocks.N.attn.in_proj_weight`, `text.text_projection`, `logit_bias`), so an
open_clip SigLIP 2 checkpoint loads with its image tower renamed from `visual.trunk.` to `visual.`
(`visionzoo.weights.convert.siglip`). The image towers are `visionzoo.models.siglip`'s.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from visionzoo.errors import SettingError, UsageError, require_extra
from visionzoo.layers.dual_encoder import DualEncoder
from visionzoo.layers.init import init_text_tower_

__all__ = ["SigLipTextConfig", "SigLipTextTransformer", "SigLIP", "SigLipTokenizer", "SIGLIP_MODELS",
           "load_siglip_tokenizer"]


class TextBlock(nn.Module):
    """Pre-norm transformer block, attention in both directions (names as open_clip's
    `ResidualAttentionBlock`; `nn.MultiheadAttention` holds `in_proj_weight` and `out_proj`)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, norm_eps: float):
        super().__init__()
        if width % heads:
            raise SettingError(f"text width {width} is not divisible by heads {heads}")
        self.ln_1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width, eps=norm_eps)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([  # big_vision's GELU is the tanh approximation
            ("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU(approximate="tanh")),
            ("c_proj", nn.Linear(hidden, width)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    """The stack of blocks; a module of its own only to keep open_clip's `transformer.resblocks` names."""

    def __init__(self, config: SigLipTextConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(TextBlock(config.width, config.heads, config.mlp_ratio, config.norm_eps)
                                       for _ in range(config.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


@dataclass(frozen=True)
class SigLipTextConfig:
    """SigLIP 2's text tower: Tschannen et al., 2025, "SigLIP 2: Multilingual Vision-Language Encoders with
    Improved Semantic Understanding, Localization, and Dense Features"."""

    width: int = 768
    layers: int = 12
    heads: int = 12
    context_length: int = 64  # texts are padded to exactly this many tokens; the last one is read
    vocab_size: int = 256000  # Gemma's SentencePiece vocabulary
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6


class SigLipTextTransformer(nn.Module):
    """SigLIP 2's text encoder (Tschannen et al., 2025): a bidirectional transformer whose output at
    the last position, projected by `text_projection` (a Linear with bias), is the text embedding."""

    def __init__(self, config: SigLipTextConfig, embed_dim: int = 768):
        super().__init__()
        self.config = config
        self.context_length = config.context_length
        self.embed_dim = embed_dim
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = _Transformer(config)
        self.ln_final = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.text_projection = nn.Linear(config.width, embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """open_clip's initialisation: residual projections scaled down with depth."""
        width, layers = self.config.width, self.config.layers
        init_text_tower_(self.token_embedding, self.positional_embedding, self.transformer.resblocks, width, layers)
        nn.init.normal_(self.text_projection.weight, std=width**-0.5)
        nn.init.zeros_(self.text_projection.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (N, context_length), padded as `SigLipTokenizer` pads -> embeddings (N, embed_dim)."""
        if tokens.shape[-1] > self.context_length:
            raise SettingError(f"{tokens.shape[-1]} tokens exceed the context length {self.context_length}; "
                               f"tokenize with context_length={self.context_length}")
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[-1]]  # (N, L, width)
        x = self.ln_final(self.transformer(x))
        return self.text_projection(x[:, -1])  # (N, width) at the last position -> (N, embed_dim)


# --- the paired model ----------------------------------------------------------------------


class SigLIP(DualEncoder):
    """SigLIP 2's image and text towers with a learned logit scale and bias (Zhai et al., 2023; Tschannen
    et al., 2025). `visual` is a registered SigLIP image tower (no classifier: its pooled output is the
    image embedding). `forward` gives logits whose sigmoid is the probability that image and text match."""

    def __init__(self, visual: nn.Module, text: SigLipTextTransformer, init_logit_scale: float = 2.302585,
                 init_logit_bias: float = -10.0):  # log(10) and -10: the paper's initialisation
        width = getattr(visual, "num_features", None) if getattr(visual, "num_classes", 0) == 0 else visual.num_classes
        super().__init__(visual, text, width, f"build the text tower with embed_dim={width}")
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (N images, M texts): scale * cosine similarity + bias; each one's sigmoid stands alone."""
        return self.logit_scale.exp() * self.cosine(images, tokens) + self.logit_bias


# open_clip's model names -> (image tower, text config, embedding width)
SIGLIP_MODELS: dict[str, tuple[str, SigLipTextConfig, int]] = {
    "ViT-B-16-SigLIP2": ("vit_base_patch16_siglip_224", SigLipTextConfig(), 768),
    "ViT-B-16-SigLIP2-256": ("vit_base_patch16_siglip_256", SigLipTextConfig(), 768),
}


# --- tokenizer -----------------------------------------------------------------------------

_PUNCTUATION = str.maketrans("", "", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def canonicalize(text: str) -> str:
    """big_vision's cleaning of prompts for SigLIP: underscores to spaces, punctuation dropped, lower case,
    runs of white space made one space."""
    return " ".join(text.replace("_", " ").translate(_PUNCTUATION).lower().split())


class SigLipTokenizer:
    """Token ids for SigLIP 2 from a Hugging Face `tokenizer.json` (Gemma's SentencePiece model, shipped
    with the weights), read by the `tokenizers` library: cleaned text, the file's special tokens, cut to
    `context_length`, padded with the pad token to exactly `context_length` (the text tower reads the last
    position, so every text must be padded alike).

    The special tokens are the file's own (its post-processor, as `transformers` applies them for a
    fast tokenizer); a `tokenizer_config.json` beside it may name the `pad_token` and `padding_side`.
    """

    def __init__(self, path: str | Path, context_length: int = 64):
        tokenizers = require_extra("tokenizers", "clip", "SigLIP 2's tokenizer")
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise UsageError(f"no SigLIP tokenizer file at {path}; pass the tokenizer.json that ships with the "
                             "weights (e.g. from the Hub repo timm/ViT-B-16-SigLIP2)")
        self.path = path
        self.context_length = context_length
        self.tokenizer = tokenizers.Tokenizer.from_file(str(path))
        settings = _tokenizer_settings(path.with_name("tokenizer_config.json"))
        pad_token = settings.get("pad_token") or (self.tokenizer.padding or {}).get("pad_token") or "<pad>"
        pad_id = self.tokenizer.token_to_id(pad_token)
        self.pad_id = 0 if pad_id is None else pad_id  # open_clip's text tower pads with 0 by default
        self.tokenizer.enable_truncation(max_length=context_length)
        self.tokenizer.enable_padding(length=context_length, pad_id=self.pad_id, pad_token=pad_token,
                                      direction=settings.get("padding_side") or "right")

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Token ids (N, context_length)."""
        if context_length is not None and context_length != self.context_length:
            raise SettingError(f"this tokenizer pads to {self.context_length} tokens, not {context_length}")
        if isinstance(texts, str):
            texts = [texts]
        encodings = self.tokenizer.encode_batch([canonicalize(text) for text in texts])
        return torch.tensor([encoding.ids for encoding in encodings], dtype=torch.long)


def _tokenizer_settings(path: Path) -> dict:
    if not path.is_file():
        return {}
    settings = json.loads(path.read_text())
    pad = settings.get("pad_token")
    if isinstance(pad, dict):  # an AddedToken written out
        settings["pad_token"] = pad.get("content")
    return settings


def load_siglip_tokenizer(source: str | Path, context_length: int = 64) -> SigLipTokenizer:
    """`SigLipTokenizer` from a local `tokenizer.json` (or a folder holding it), or from a Hub repo as
    `hf-hub:timm/ViT-B-16-SigLIP2` (downloads `tokenizer.json` and, when there, `tokenizer_config.json`)."""
    text = str(source)
    if not text.startswith("hf-hub:"):
        return SigLipTokenizer(source, context_length)
    from visionzoo.weights.files import hub_download

    repo, _, revision = text[len("hf-hub:"):].partition("@")
    try:  # the visionzoo cache, the Hugging Face cache (offline too), then the Hub
        path = hub_download(repo, ["tokenizer.json"], revision or None)
    except Exception as error:  # offline, no such repo, no such file: all one answer for the user
        raise UsageError(f"cannot get tokenizer.json from the Hub repo {repo!r} ({error}); "
                         "pass a local tokenizer.json instead") from error
    try:  # lands beside tokenizer.json (one snapshot folder), where the tokenizer reads it
        hub_download(repo, ["tokenizer_config.json"], revision or None)
    except UsageError:  # optional: without it, the tokenizer file's own padding settings apply
        pass
    return SigLipTokenizer(path, context_length)
