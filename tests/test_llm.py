"""llm/: references, prompts, pseudo-token splicing, the answer loss, LoRA, and exact constrained scoring."""
import math

import numpy as np
import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from egmf.cache.schema import LabelSpec
from egmf.llm import attention
from egmf.llm.decoding import AnswerTrie, greedy_tokens, score_answers, spelled_answer
from egmf.llm.loading import DEFAULT_LLM, load_causal_lm
from egmf.llm.lora import ATTENTION, MLP, attach_lora, lora_targets
from egmf.llm.prompts import PLACEHOLDER, Prompter, format_score, score_strings
from egmf.llm.sequences import answer_loss, causal_mask, embed_rows, embedding_rms, pad_left, positions
from egmf.llm.tiny import save_tiny_lm

EMOTION = LabelSpec("emotion", "class", ("neutral", "joy", "anger"))
GANZHI = LabelSpec("emotion", "class", ("愤怒", "高兴"))
SENTIMENT = LabelSpec("sentiment", "score", low=-1.0, high=1.0)
K = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, tokenizer = load_causal_lm(str(save_tiny_lm(tmp_path_factory.mktemp("tiny"))))
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def prompter(tiny):
    return Prompter(tiny[1], [EMOTION, GANZHI, SENTIMENT], n_tokens=K, max_text_tokens=32)


def visible(tokenizer, ids):
    return tokenizer.decode([i for i in ids if i != PLACEHOLDER])


def test_a_random_lm_is_a_portable_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("EGMF_HOME", str(tmp_path))
    model, tokenizer = load_causal_lm("random:llama-tiny")
    assert model.name_or_path == "random:llama-tiny"  # what peft and model.json record: no machine's path
    assert (tmp_path / "models" / "llama-tiny" / "config.json").is_file()
    assert len(tokenizer) == model.get_input_embeddings().weight.shape[0]


def test_a_single_file_that_is_not_gguf_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="not a .gguf"):
        load_causal_lm(str(tmp_path / "weights.bin"))


def test_loaded_model_records_its_reference(tiny, tmp_path):
    assert tiny[0].config._attn_implementation == attention.NAME
    reference = str(save_tiny_lm(tmp_path / "lm"))
    assert load_causal_lm(reference)[0].name_or_path == reference


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_plain_attention_computes_what_sdpa_computes_with_grouped_heads(mask_kind):
    torch.manual_seed(0)
    B, Hq, Hkv, L, D = 3, 4, 2, 6, 8
    q, k, v = (torch.randn(B, h, L, D, dtype=torch.float64, requires_grad=True) for h in (Hq, Hkv, Hkv))
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[0, :2] = valid[2, :4] = False  # left padding, as llm.sequences makes it
    allowed = causal_mask(valid)  # (B, 1, L, L)
    mask = {"bool": allowed, "none": None,
            "additive": torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, float("-inf"))}[mask_kind]
    module = torch.nn.Module().eval()
    out, weights = attention.plain_attention(module, q, k, v, mask, scaling=D ** -0.5)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True).transpose(1, 2)
    # The softmax runs in float32 (as transformers' eager attention), so float64 agrees to ~1e-6.
    assert out.shape == (B, L, Hq, D) and torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(B, Hq, L, dtype=torch.float64))
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    assert all(torch.allclose(a, b, atol=1e-5)
               for a, b in zip(grads, torch.autograd.grad(expected.square().sum(), (q, k, v))))


def test_plain_attention_soft_caps_the_scores_before_the_mask():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 8, dtype=torch.float64) * 4 for _ in range(3))
    allowed = causal_mask(torch.ones(1, 4, dtype=torch.bool))
    module, cap = torch.nn.Module().eval(), 2.0
    _, weights = attention.plain_attention(module, q, k, v, allowed, scaling=1.0, softcap=cap)
    scores = (cap * torch.tanh(q @ k.transpose(2, 3) / cap)).masked_fill(~allowed, float("-inf"))
    assert torch.allclose(weights, scores.softmax(-1), atol=1e-6)
    _, uncapped = attention.plain_attention(module, q, k, v, allowed, scaling=1.0)
    assert not torch.allclose(weights, uncapped, atol=1e-3)  # the scores here are large enough for the cap to act


def test_the_llm_gives_the_same_logits_with_plain_attention_and_sdpa(tiny):
    model = tiny[0]
    ids, valid = pad_left([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]], 0)
    inputs = dict(input_ids=ids, attention_mask=causal_mask(valid), position_ids=positions(valid), use_cache=False)
    plain = model(**inputs).logits
    model.set_attn_implementation("sdpa")
    try:
        fused = model(**inputs).logits
    finally:
        model.set_attn_implementation(attention.NAME)
    assert torch.allclose(plain[valid], fused[valid], atol=1e-5)


def test_prompts_per_language_and_task(tiny, prompter):
    tokenizer = tiny[1]
    en = prompter.prompt(0, "en", "I can't believe it")
    assert en[:K] == [PLACEHOLDER] * K and PLACEHOLDER not in en[K:]
    assert visible(tokenizer, en) == "Transcript: I can't believe it\nEmotion (neutral, joy, anger):"
    assert visible(tokenizer, prompter.prompt(1, "zh", "太好了")) == "文本：太好了\n情绪（愤怒、高兴）："
    assert visible(tokenizer, prompter.prompt(2, "en", "ok")) == "Transcript: ok\nSentiment score from -1.0 to 1.0:"
    assert visible(tokenizer, prompter.prompt(2, "zh", "好")) == "文本：好\n情感分数（-1.0到1.0）："
    long = prompter.prompt(0, "en", "word " * 200)
    fixed = len(prompter.prompt(0, "en", "")) - len(tokenizer.encode(" ", add_special_tokens=False))
    assert len(long) == fixed + 32  # the transcript is cut to max_text_tokens
    assert tokenizer.decode(prompter.answer_ids(0, "en")[1]) == " joy"
    assert tokenizer.decode(prompter.answer_ids(1, "zh")[1]) == "高兴"
    with pytest.raises(ValueError, match="TEMPLATES"):
        prompter.prompt(0, "fr", "bonjour")


def test_earlier_turns_keep_the_most_recent_that_fit(tiny, prompter):
    tokenizer = tiny[1]
    cost = lambda text: len(tokenizer.encode(f"Before: {text}\n", add_special_tokens=False))
    with_history = Prompter(tokenizer, [EMOTION, GANZHI], n_tokens=K, max_text_tokens=32,
                            max_history_tokens=cost("second one") + cost("third"))
    ids = with_history.prompt(0, "en", "now", [("", "first of all"), ("", "second one"), ("", "third")])
    assert ids[:K] == [PLACEHOLDER] * K
    assert visible(tokenizer, ids) == ("Before: second one\nBefore: third\nTranscript: now\n"
                                       "Emotion (neutral, joy, anger):")
    zh = with_history.prompt(1, "zh", "好", [("", "你呢")])
    assert visible(tokenizer, zh) == "前文：你呢\n文本：好\n情绪（愤怒、高兴）："
    # A most recent turn longer than the budget leaves the history out rather than cutting it mid-sentence.
    assert (with_history.prompt(0, "en", "now", [("", "first"), ("", "word " * 50)])
            == with_history.prompt(0, "en", "now"))
    assert prompter.prompt(0, "en", "now", [("", "first")]) == prompter.prompt(0, "en", "now")  # no budget


def test_named_speakers_begin_their_transcripts_and_count_in_the_budgets(tiny):
    tokenizer = tiny[1]
    cost = lambda text: len(tokenizer.encode(f"Before: {text}\n", add_special_tokens=False))
    prompter = Prompter(tokenizer, [EMOTION, GANZHI], n_tokens=K, max_text_tokens=32,
                        max_history_tokens=cost("Ross: second") + cost("third"))
    ids = prompter.prompt(0, "en", "now", [("Ross", "first"), ("Ross", "second"), ("", "third")], "Rachel")
    assert visible(tokenizer, ids) == ("Before: Ross: second\nBefore: third\nTranscript: Rachel: now\n"
                                       "Emotion (neutral, joy, anger):")
    zh = prompter.prompt(1, "zh", "好", [("小王", "你呢")], "小李")
    assert visible(tokenizer, zh) == "前文：小王：你呢\n文本：小李：好\n情绪（愤怒、高兴）："
    assert prompter.prompt(0, "en", "", speaker="Rachel") == prompter.prompt(0, "en", "")  # no words, no name
    # The name is part of the transcript, so the transcript's cut counts it.
    short = Prompter(tokenizer, [EMOTION], n_tokens=K, max_text_tokens=len(tokenizer.encode(" Rachel:")))
    assert visible(tokenizer, short.prompt(0, "en", "now", speaker="Rachel")).startswith("Transcript: Rachel:\n")


def test_score_strings_targets_and_parsing(prompter):
    mosei = score_strings(-3.0, 3.0)
    assert len(mosei) == 61 and mosei[0] == "-3.0" and mosei[-1] == "3.0" and "-0.0" not in mosei
    assert score_strings(-1.0, 1.0) == prompter.answers(2) and len(prompter.answers(2)) == 21
    assert format_score(-0.04, -1, 1) == "0.0" and format_score(7.2, -3, 3) == "3.0"
    assert prompter.answers(2)[prompter.target_index(2, 0.44)] == "0.4"
    assert prompter.answers(2)[prompter.target_index(2, -1.3)] == "-1.0"  # clipped to the range
    assert prompter.target_index(0, np.int64(2)) == 2
    for bad_task, bad in [(0, -1), (0, 3), (0, 1.0), (2, float("nan")), (2, None)]:
        with pytest.raises(ValueError, match="unlabelled rows"):
            prompter.target_index(bad_task, bad)
    assert prompter.parse(0, "anger") == 2 and prompter.parse(2, "-0.3") == pytest.approx(-0.3)
    assert prompter.parse(0, "happy") is None and prompter.parse(2, "1.5") is None and prompter.parse(2, "0.25") is None


def test_answer_trie_shares_prefixes_and_refuses_prefix_answers():
    trie = AnswerTrie.build([[1, 2, 3], [1, 2, 4], [1, 5, 6], [7, 8]])
    assert trie.node_tokens == (1, 2, 5, 7) and trie.node_depth == (1, 2, 2, 1)
    assert trie.step_source.tolist() == [[0, 1, 2], [0, 1, 2], [0, 1, 3], [0, 4, 0]]
    assert trie.step_valid.tolist()[3] == [True, True, False]
    assert trie.ancestry[1].tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="prefix"):
        AnswerTrie.build([[1, 2], [1, 2, 3]])


def row_log_likelihood(lm, ids, tokens, filler):
    """Brute force: one unpadded row, teacher-forced; the summed log-probabilities of its last `n` tokens."""
    prompt, answer = ids
    embeds, valid = embed_rows(lm, [prompt + answer], tokens, filler)
    logits = lm(inputs_embeds=embeds, attention_mask=causal_mask(valid), position_ids=positions(valid)).logits
    log_probs = torch.log_softmax(logits[0, -len(answer) - 1:-1], -1)
    return log_probs[torch.arange(len(answer)), torch.tensor(answer)].sum()


def test_tree_scoring_equals_scoring_each_answer_on_its_own(tiny, prompter):
    lm, tokenizer = tiny
    rows = [(0, "en", "hello"), (2, "zh", "一个很长很长的句子 with more words"), (1, "zh", "好"), (2, "en", "")]
    prompts = [prompter.prompt(t, lang, text) for t, lang, text in rows]
    tokens = torch.randn(len(rows), K, lm.config.hidden_size)
    tries = [AnswerTrie.build(prompter.answer_ids(t, lang)) for t, lang, _ in rows]
    with torch.no_grad():
        embeds, valid = embed_rows(lm, prompts, tokens, filler=0)
        scores = score_answers(lm, embeds, valid, tries, filler=0)
        for b, (task, lang, _) in enumerate(rows):
            expected = torch.stack([row_log_likelihood(lm, (prompts[b], answer), tokens[b:b + 1], 0)
                                    for answer in prompter.answer_ids(task, lang)])
            torch.testing.assert_close(scores[b], expected, atol=2e-4, rtol=1e-4)


def test_free_greedy_tokens_equal_greedy_decoding_of_each_row_alone(tiny, prompter):
    lm, _ = tiny
    rows = [(0, "en", "hello"), (2, "zh", "一个很长很长的句子 with more words"), (1, "en", "")]
    prompts = [prompter.prompt(t, lang, text) for t, lang, text in rows]
    tokens = torch.randn(len(rows), K, lm.config.hidden_size)
    with torch.no_grad():
        embeds, valid = embed_rows(lm, prompts, tokens, filler=0)  # left-padded: rows of different lengths
        batched = greedy_tokens(lm, embeds, valid, steps=4)
        for b in range(len(rows)):  # reference: each row alone, no padding, no cache, whole sequence every step
            row, ids = embeds[b:b + 1, valid[b]], []
            for _ in range(4):
                ids.append(int(lm(inputs_embeds=row, use_cache=False).logits[0, -1].argmax()))
                row = torch.cat([row, lm.get_input_embeddings()(torch.tensor([[ids[-1]]]))], 1)
            assert batched[b].tolist() == ids
    answers = [[5, 6], [5, 7, 8], [9]]
    assert spelled_answer([5, 7, 8, 1], answers) == 1 and spelled_answer([9, 9], answers) == 2
    assert spelled_answer([5, 8, 6], answers) is None


def test_padding_changes_nothing_and_loss_covers_only_the_answer(tiny, prompter):
    lm, _ = tiny
    answers = [prompter.answer_ids(0, "en")[1], prompter.answer_ids(2, "en")[5]]
    rows = [prompter.prompt(0, "en", "a short one") + answers[0],
            prompter.prompt(2, "en", "a much longer transcript than the first") + answers[1]]
    tokens = torch.randn(2, K, lm.config.hidden_size)
    with torch.no_grad():
        embeds, valid = embed_rows(lm, rows, tokens, filler=0)
        A = max(map(len, answers))
        logits = lm(inputs_embeds=embeds, attention_mask=causal_mask(valid), position_ids=positions(valid),
                    logits_to_keep=A + 1).logits
        loss = answer_loss(logits, answers)
        alone = [row_log_likelihood(lm, (row[:-len(a)], a), tokens[i:i + 1], 0) for i, (row, a) in
                 enumerate(zip(rows, answers))]
    n_tokens = sum(map(len, answers))
    assert loss.item() == pytest.approx(-sum(alone).item() / n_tokens, rel=1e-4)
    # Class weighting: each row's tokens count its weight's times, over the same number of answer tokens.
    weighted = answer_loss(logits, answers, torch.tensor([2.0, 0.0]))
    assert weighted.item() == pytest.approx(-2 * alone[0].item() / n_tokens, rel=1e-4)


def test_splicing_puts_each_rows_pseudo_tokens_at_its_placeholders(tiny, prompter):
    lm, _ = tiny
    rows = [prompter.prompt(0, "en", "hi"), prompter.prompt(0, "en", "a longer text here")]
    tokens = torch.randn(2, K, lm.config.hidden_size)
    embeds, valid = embed_rows(lm, rows, tokens, filler=0)
    for b, row in enumerate(rows):
        start = embeds.shape[1] - len(row)  # left padding
        torch.testing.assert_close(embeds[b, start:start + K], tokens[b])
        assert not valid[b, :start].any() and valid[b, start:].all()
    with pytest.raises(ValueError, match="placeholders"):
        embed_rows(lm, rows, tokens[:, :1], filler=0)


def test_pseudo_tokens_match_the_embeddings_the_layers_read(tiny):
    lm, _ = tiny
    table = lm.get_input_embeddings().weight
    assert embedding_rms(lm) == table.pow(2).mean().sqrt().item()  # Llama: the table itself, to the last bit
    config = Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32)
    gemma = Gemma3ForCausalLM(config)  # Gemma multiplies the rows it looks up by sqrt(hidden size)
    table = gemma.get_input_embeddings().weight
    assert embedding_rms(gemma) == pytest.approx(table.pow(2).mean().sqrt().item() * 8, rel=1e-5)


def test_lora_trains_only_adapters(tmp_path):
    lm, _ = load_causal_lm(str(save_tiny_lm(tmp_path / "lm")))
    base_count = sum(p.numel() for p in lm.parameters())
    peft = attach_lora(lm, r=4, alpha=8, dropout=0.0, targets=ATTENTION)
    trainable = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == set(ATTENTION)
    lm2, _ = load_causal_lm(str(save_tiny_lm(tmp_path / "lm2")))
    with_mlp = attach_lora(lm2, r=4, alpha=8, dropout=0.0, targets=ATTENTION + MLP)
    assert sum(p.numel() for p in with_mlp.parameters() if p.requires_grad) > \
        sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert sum(p.numel() for p in peft.parameters() if p.requires_grad) < base_count / 5
    lm3, _ = load_causal_lm(str(save_tiny_lm(tmp_path / "lm3")))
    with pytest.raises(ValueError, match=r"no linear module named down_prj\. Fix: choose among .*down_proj"):
        attach_lora(lm3, r=4, alpha=8, dropout=0.0, targets=ATTENTION + ("down_prj",))  # peft alone would skip it


def test_lora_targets_expand_groups_keep_names_and_refuse_an_empty_spec():
    assert lora_targets("attention") == ATTENTION
    assert lora_targets("attention, mlp") == ATTENTION + MLP
    assert lora_targets("v_proj,attention,q_proj") == ("v_proj", "q_proj", "k_proj", "o_proj")  # once each
    with pytest.raises(ValueError, match="names no module"):
        lora_targets(" , ")


@pytest.mark.slow
def test_smollm2_gguf_loads_and_ranks_an_obvious_emotion_first():
    lm, tokenizer = load_causal_lm(DEFAULT_LLM)
    assert lm.config.vocab_size == 49152 and lm.name_or_path == DEFAULT_LLM
    label = LabelSpec("emotion", "class", ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"))
    prompter = Prompter(tokenizer, [label], n_tokens=1, max_text_tokens=64)
    texts = ["I am so happy, this is the best day of my life!", "I hate you, get out of my house right now!"]
    prompts = [prompter.prompt(0, "en", t) for t in texts]
    table = lm.get_input_embeddings().weight
    tokens = table[tokenizer.encode(" ", add_special_tokens=False)].mean(0).expand(2, 1, -1)  # a neutral token
    with torch.no_grad():
        embeds, valid = embed_rows(lm, prompts, tokens, filler=tokenizer.eos_token_id)
        trie = AnswerTrie.build(prompter.answer_ids(0, "en"))
        scores = score_answers(lm, embeds, valid, [trie, trie], filler=tokenizer.eos_token_id)
    assert [label.classes[int(s.argmax())] for s in scores] == ["joy", "anger"]
    assert all(math.isfinite(v) for s in scores for v in s.tolist())
