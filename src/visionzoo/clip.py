"""CLIP: the text tower, the paired model, and zero-shot classification from prompts.

Radford et al., 2021, "Learning Transferable Visual Models From Natural Language Supervision".

The image towers are registered ViTs (`vit_base_patch32_clip_224`, ...; `visionzoo.models.vit`)
built with `num_classes=embed_dim`, so their classifier `head` is CLIP's image projection, as
in timm. The text tower here keeps open_clip's module names (`token_embedding`,
`transformer.resblocks.N.attn.in_proj_weight`, `ln_final`, `text_projection`, ...), so an
open_clip text state_dict loads into it unchanged.

The tokenizer is CLIP's byte-pair encoding with its 49,408-token vocabulary, taken from
open_clip (the optional `clip` extra: `pip install 'visionzoo[clip]'`), which ships both.

Building (`create_clip`, `zero_shot_classifier`) is in `visionzoo.factory`, which gives each
model its spec. `zero_shot_classifier(clip, class_names)` turns class names into an ordinary classification
model: the image tower plus a linear head whose rows are the normalised, prompt-ensembled
text embeddings of the classes, scaled by the logit scale.

The same path serves SigLIP 2 (`visionzoo.siglip_text.SigLIP`, with its own tokenizer): its
pair carries a `logit_bias`, which becomes the head's bias, and its logits are read one label at a
time through a sigmoid (the classifier's spec says `task: multilabel`), so the probabilities are
independent and need not sum to 1.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.errors import MissingExtraError, SettingError
from visionzoo.layers.dual_encoder import DualEncoder
from visionzoo.layers.init import init_text_tower_
from visionzoo.layers.mlp import QuickGELU

__all__ = ["ClipTextConfig", "TextTransformer", "CLIP", "ZeroShotClassifier", "CLIP_MODELS", "clip_data_config",
           "class_embeddings", "make_zero_shot_classifier", "tokenize", "IMAGENET_TEMPLATES"]


# --- tokenizer -----------------------------------------------------------------------------

_tokenizer = None


def tokenize(texts: str | Sequence[str], context_length: int = 77) -> torch.Tensor:
    """CLIP token ids (N, context_length): start token, BPE of the lower-cased text, end token,
    zero padding; texts too long are cut and keep their end token."""
    global _tokenizer
    if _tokenizer is None:
        try:
            from open_clip.tokenizer import SimpleTokenizer
        except ImportError as error:
            raise MissingExtraError("CLIP's tokenizer comes from open_clip, an optional dependency: "
                              "pip install 'visionzoo[clip]' (or open_clip_torch)") from error
        _tokenizer = SimpleTokenizer()
    if isinstance(texts, str):
        texts = [texts]
    return _tokenizer(list(texts), context_length=context_length)


# --- text tower ----------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each token sees itself and the tokens before it.

    Parameters are named as in `nn.MultiheadAttention` (`in_proj_weight`, `in_proj_bias`,
    `out_proj`), which OpenAI's and open_clip's text towers use, so their weights load unchanged.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise SettingError(f"text width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        # (N, L, 3C) -> (3, N, heads, L, C / heads)
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).reshape(batch, length, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(x.transpose(1, 2).reshape(batch, length, width))  # (N, heads, L, d) -> (N, L, C)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block of the CLIP text tower (names as OpenAI's and open_clip's)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)), ("gelu", act_layer()), ("c_proj", nn.Linear(hidden, width)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    """The stack of blocks; a module of its own only to keep the `transformer.resblocks` names."""

    def __init__(self, width: int, layers: int, heads: int, act_layer: type[nn.Module]):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, act_layer=act_layer) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


@dataclass(frozen=True)
class ClipTextConfig:
    """CLIP's text tower: Radford et al., 2021, "Learning Transferable Visual Models From Natural Language
    Supervision"."""

    width: int = 512
    layers: int = 12
    heads: int = 8
    context_length: int = 77
    vocab_size: int = 49408
    quick_gelu: bool = False  # OpenAI's weights were trained with QuickGELU


class TextTransformer(nn.Module):
    """CLIP's text encoder (Radford et al., 2021): a causal transformer over BPE tokens whose
    output at the end-of-text token, projected by `text_projection`, is the text embedding.

    The end token has the largest id in CLIP's vocabulary, so `argmax` over the ids finds it.
    """

    def __init__(self, config: ClipTextConfig, embed_dim: int = 512):
        super().__init__()
        self.config = config
        self.context_length = config.context_length
        self.embed_dim = embed_dim
        act_layer = QuickGELU if config.quick_gelu else nn.GELU
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = _Transformer(config.width, config.layers, config.heads, act_layer)
        self.ln_final = nn.LayerNorm(config.width)
        self.text_projection = nn.Parameter(torch.empty(config.width, embed_dim))  # (width, embed_dim): x @ proj
        self._init_weights()

    def _init_weights(self) -> None:
        """CLIP's initialisation: residual projections scaled down with depth."""
        width, layers = self.config.width, self.config.layers
        init_text_tower_(self.token_embedding, self.positional_embedding, self.transformer.resblocks, width, layers)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (N, L <= context_length) -> text embeddings (N, embed_dim), not normalised."""
        if tokens.shape[-1] > self.context_length:
            raise SettingError(f"{tokens.shape[-1]} tokens exceed the context length {self.context_length}; "
                             f"tokenize with context_length={self.context_length}")
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[-1]]  # (N, L, width)
        x = self.ln_final(self.transformer(x))
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # (N, width) at the end token
        return x @ self.text_projection


# --- the paired model ----------------------------------------------------------------------


class CLIP(DualEncoder):
    """An image tower and a text tower embedding into one space, with a learned logit scale
    (Radford et al., 2021). `visual` is a registered CLIP ViT whose `head` is the image projection."""

    def __init__(self, visual: nn.Module, text: TextTransformer, init_logit_scale: float = math.log(1 / 0.07)):
        super().__init__(visual, text, getattr(visual, "num_classes", None),
                         f"build the image tower with num_classes={text.embed_dim}")
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (N images, M texts): scaled cosine similarities."""
        return self.logit_scale.exp() * self.cosine(images, tokens)


_B = ClipTextConfig(width=512, layers=12, heads=8)
_L = ClipTextConfig(width=768, layers=12, heads=12)
_B_QUICK = ClipTextConfig(width=512, layers=12, heads=8, quick_gelu=True)
_L_QUICK = ClipTextConfig(width=768, layers=12, heads=12, quick_gelu=True)

# open_clip's model names -> (image tower, text config, embedding width)
CLIP_MODELS: dict[str, tuple[str, ClipTextConfig, int]] = {
    "ViT-B-32": ("vit_base_patch32_clip_224", _B, 512),
    "ViT-B-16": ("vit_base_patch16_clip_224", _B, 512),
    "ViT-L-14": ("vit_large_patch14_clip_224", _L, 768),
    "ViT-B-32-quickgelu": ("vit_base_patch32_clip_quickgelu_224", _B_QUICK, 512),
    "ViT-B-16-quickgelu": ("vit_base_patch16_clip_quickgelu_224", _B_QUICK, 512),
    "ViT-L-14-quickgelu": ("vit_large_patch14_clip_quickgelu_224", _L_QUICK, 768),
}


# --- zero-shot classification --------------------------------------------------------------

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


def clip_data_config(visual: nn.Module, sigmoid: bool = False) -> dict:
    """CLIP's preprocessing at the image tower's input size: bicubic resize of the short side,
    centre crop (crop_pct 1), normalised by the mean and std of CLIP's training images. SigLIP's
    (`sigmoid`): the whole image squashed to the input size, normalised to [-1, 1], as open_clip's."""
    size = 224
    patch_embed = getattr(visual, "patch_embed", None)
    if getattr(patch_embed, "img_size", None) is not None:
        size = int(patch_embed.img_size[0])
    if sigmoid:
        return {"input_size": (3, size, size), "interpolation": "bicubic", "mean": SIGLIP_MEAN, "std": SIGLIP_STD,
                "crop_pct": 1.0, "resize_mode": "squash"}
    return {"input_size": (3, size, size), "interpolation": "bicubic", "mean": CLIP_MEAN, "std": CLIP_STD,
            "crop_pct": 1.0}



class ZeroShotClassifier(nn.Module):
    """An image classifier made from CLIP and class names: the image tower, then a linear head
    (no bias) whose rows are the classes' unit text embeddings times the logit scale, applied to
    the unit image embedding. Logits are CLIP's scaled cosine similarities. With `logit_bias`
    (SigLIP) the head has that bias and each logit's sigmoid is its label's probability (`sigmoid`).

    It has the shared interface (`forward_features`, `forward_head(pre_logits=)`,
    `reset_classifier`, `num_features`, `num_classes`), so predict, eval, benchmark and export
    treat it as any other model; `pre_logits` is the normalised image embedding.
    """

    def __init__(self, visual: nn.Module, class_embeddings: torch.Tensor, logit_scale: float,
                 logit_bias: float | None = None):
        super().__init__()
        num_classes, embed_dim = class_embeddings.shape
        self.visual = visual
        self.num_features = embed_dim
        self.num_classes = num_classes
        self.sigmoid = logit_bias is not None  # independent per-label probabilities (SigLIP), not a softmax
        self.head = nn.Linear(embed_dim, num_classes, bias=self.sigmoid)
        with torch.no_grad():
            self.head.weight.copy_(logit_scale * F.normalize(class_embeddings, dim=-1))
            if logit_bias is not None:
                self.head.bias.fill_(logit_bias)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.sigmoid = False
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.normalize(self.visual.forward_head(x), dim=-1)  # unit image embedding (N, embed_dim)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@torch.no_grad()
def class_embeddings(model: nn.Module, class_names: Sequence[str], templates: Sequence[str] = (),
                     batch_size: int = 256, tokenizer: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """One unit vector per class (C, embed_dim): the normalised mean of the normalised text
    embeddings of every prompt `template.format(name)` (prompt ensembling, Radford et al. section 3.1.4).
    `tokenizer` (texts, context_length=) -> ids: CLIP's unless given; a SigLIP pair needs its own."""
    templates = list(templates) or list(IMAGENET_TEMPLATES)
    for template in templates:
        if "{}" not in template:
            raise SettingError(f"template {template!r} has no '{{}}' where the class name goes; "
                             "e.g. 'a photo of a {}.'")
    if not class_names:
        raise SettingError("no class names given")
    device = next(model.parameters()).device
    prompts = [template.format(name) for name in class_names for template in templates]
    tokens = (tokenizer or tokenize)(prompts, context_length=model.text.context_length)
    embeddings = torch.cat([model.encode_text(chunk.to(device), normalize=True)
                            for chunk in tokens.split(batch_size)])  # (C * T, D)
    embeddings = embeddings.reshape(len(class_names), len(templates), -1).mean(dim=1)  # (C, D)
    return F.normalize(embeddings, dim=-1)


def make_zero_shot_classifier(model: nn.Module, class_names: Sequence[str], templates: Sequence[str] | None = None,
                              batch_size: int = 256, tokenizer: Callable[..., torch.Tensor] | None = None
                              ) -> ZeroShotClassifier:
    """A classifier over `class_names` from a CLIP model, with no training.

    Each class weight is the normalised mean of the normalised text embeddings of its prompts,
    one per template (default: the 80 ImageNet templates of OpenAI's CLIP); a template has a `{}`
    where the class name goes. The result shares the image tower with `model`. A SigLIP pair (it has a
    `logit_bias`) needs `tokenizer` (`visionzoo.siglip_text.SigLipTokenizer`) and gives a sigmoid head.
    """
    logit_bias = getattr(model, "logit_bias", None)
    if logit_bias is not None and tokenizer is None:
        raise SettingError("a SigLIP model needs its own tokenizer: pass tokenizer=SigLipTokenizer('tokenizer.json') "
                           "(the file ships with the weights)")
    was_training = model.training
    model.eval()
    weights = class_embeddings(model, class_names, templates or (), batch_size=batch_size, tokenizer=tokenizer)
    model.train(was_training)
    classifier = ZeroShotClassifier(model.visual, weights, float(model.logit_scale.detach().exp()),
                                    None if logit_bias is None else float(logit_bias.detach()))
    return classifier.eval()


# The 80 prompt templates OpenAI used for zero-shot ImageNet (CLIP repository, notebooks/Prompt_Engineering).
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)
