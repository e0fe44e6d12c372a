"""Benchmark 6: where a stage-two step's time goes, how far it is from the LLM's compute bound, and what removing
its waste (padding to a random batch's longest prompt, the CPU's fused attention kernel) gains per epoch."""
from __future__ import annotations

import time
from itertools import chain, count, islice

from .common import Workspace, check, result
from .training import fresh_model, load_train_split, train_epochs

# name -> (length-bucketed batches, attention implementation over the loaded LLM's own (llm.attention: plain on
# the CPU), model overrides); the first is the step as it was before this benchmark, the third the Trainer's default.
VARIANTS = {
    "random batches, SDPA": (False, "sdpa", {}),
    "random batches, plain attention": (False, None, {}),
    "bucketed, plain attention": (True, None, {}),
    "bucketed, plain attention, no LoRA dropout": (True, None, {"lora_dropout": 0.0}),
}
BEFORE, DEFAULT = "random batches, SDPA", "bucketed, plain attention"


def matmul_flops(hidden: int, inner: int, rows: int, bf16: bool, repeats: int = 20) -> float:
    """Multiply-adds x 2 per second of this machine on a step's typical matmul: (rows, hidden) @ (hidden, inner)."""
    import torch

    dtype = torch.bfloat16 if bf16 else torch.float32
    a, w = torch.randn(rows, hidden, dtype=dtype), torch.randn(hidden, inner, dtype=dtype)
    for _ in range(3):
        a @ w
    tick = time.perf_counter()
    for _ in range(repeats):
        a @ w
    return 2 * rows * hidden * inner * repeats / (time.perf_counter() - tick)


def step_flops(model, tokens: list[int]) -> float:
    """The LLM's arithmetic in one training step of rows of these lengths, counting what cannot be skipped: every
    projection forward and its input gradient backward (2 + 2 flops per weight and token; the frozen weights need
    no weight gradient) and the attention scores and mixing (forward and backward)."""
    from torch import nn

    lm = model.llm.get_base_model()
    head = lm.get_output_embeddings()
    weights = sum(m.weight.numel() for m in lm.modules() if isinstance(m, nn.Linear) and m is not head)
    c = lm.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attention = 4 * c.num_hidden_layers * c.num_attention_heads * head_dim * sum(n * n for n in tokens)
    return 4 * weights * sum(tokens) + 2 * attention


def fusion_timer(model) -> dict:
    """Hooks that add the fusion network's forward seconds to the returned dict's "seconds"."""
    spent = {"seconds": 0.0}
    model.fusion.register_forward_pre_hook(lambda *_: spent.__setitem__("start", time.perf_counter()))
    model.fusion.register_forward_hook(
        lambda *_: spent.__setitem__("seconds", spent["seconds"] + time.perf_counter() - spent["start"]))
    return spent


def bench_step_time(ws: Workspace) -> dict:
    """6: training steps of each VARIANTS entry over the same cache, in turn: phases, padding, compute bound."""
    import torch

    from ..data import BatchStream
    from ..model import ModelConfig
    from ..precision import use_bf16
    from ..train import llm_tokens

    s = ws.sizes
    url = ws.step_cache or ws.demo_cache()
    bf16 = use_bf16("auto", torch.device("cpu"))
    ws.say(f"6: {s.step_steps} training steps of each of {len(VARIANTS)} variants on {url}, in turn")
    cache, task, data = load_train_split(url, ModelConfig.context_turns)
    runs, batches, fusion = {}, {}, {}
    for name, (bucketed, attention, overrides) in VARIANTS.items():
        model = fresh_model(cache, task, s.step_model, ws.seed, **overrides)
        if attention is not None:
            model.llm.get_base_model().set_attn_implementation(attention)
        lengths = [llm_tokens(model, data)] if bucketed else None
        stream = BatchStream([data], s.step_batch_size, shuffle=True, seed=ws.seed, lengths=lengths)
        # The first is a warm-up; a small split gives its batches of later epochs too.
        batches[name] = list(islice(chain.from_iterable(stream for _ in count()), s.step_steps + 1))
        train_epochs({name: (model, batches[name][:1])}, bf16)
        fusion[name] = fusion_timer(model)
        runs[name] = (model, batches[name][1:])
    lm_config = runs[DEFAULT][0].llm.get_base_model().config
    peak = matmul_flops(lm_config.hidden_size, lm_config.intermediate_size, 1024, bf16)
    steps = train_epochs(runs, bf16)
    measured = {"cache": url, "model": s.step_model, "batch_size": s.step_batch_size, "bf16": bf16,
                "matmul_flops_per_second": peak, "variants": {}}
    for name, (model, rows) in runs.items():
        m = steps[name]
        tokens = [model.row_lengths(b) for b in rows]
        real, padded = sum(map(sum, tokens)), sum(len(t) * max(t) for t in tokens)
        flops = sum(step_flops(model, t) for t in tokens)
        measured["variants"][name] = {
            **m, "step_seconds": m["seconds"] / m["steps"], "fusion_forward_seconds": fusion[name]["seconds"],
            "real_tokens": real, "padded_tokens": padded, "padding": 1 - real / padded, "llm_flops": flops,
            "compute_bound_seconds": flops / peak, "over_bound": m["seconds"] / (flops / peak)}
    v = measured["variants"]
    before, after = v[BEFORE], v[DEFAULT]
    # An epoch puts every real token through once, and the variants' sampled batches hold different tokens: the
    # epoch's ratio is that of seconds per real token.
    per_token = {name: m["seconds"] / m["real_tokens"] for name, m in v.items()}
    speedup = per_token[BEFORE] / per_token[DEFAULT]
    share = lambda key: after[key] / after["seconds"]
    checks = [check(f"epoch speed-up, {DEFAULT} vs {BEFORE} (seconds per real token)", speedup, 1.5),
              check(f"{DEFAULT}: step time over the LLM's compute bound", after["over_bound"], None),
              check("share of LLM tokens that are padding, random batches", before["padding"], None, unit="fraction"),
              check("share of LLM tokens that are padding, bucketed", after["padding"], None, unit="fraction"),
              check(f"{DEFAULT}: share of step time in the forward pass (fusion "
                    f"{after['fusion_forward_seconds'] / after['seconds']:.1%})", share("forward_seconds"), None,
                    unit="fraction"),
              check(f"{DEFAULT}: share of step time in the backward pass", share("backward_seconds"), None,
                    unit="fraction"),
              check(f"{DEFAULT}: share of step time in the optimiser and waiting for data",
                    share("optimiser_seconds") + share("data_seconds"), None, unit="fraction"),
              check("speed-up from no LoRA dropout on top (a recipe change, not made by default)",
                    per_token[DEFAULT] / per_token["bucketed, plain attention, no LoRA dropout"], None)]
    bound = [f"Per step ({DEFAULT}): {after['step_seconds']:.2f} s against a compute bound of "
             f"{after['compute_bound_seconds'] / after['steps']:.2f} s ({after['llm_flops'] / after['steps'] / 1e9:.0f}"
             f" GFLOP at the {peak / 1e9:.0f} GFLOP/s one matmul reaches here); {BEFORE}: "
             f"{before['step_seconds']:.2f} s."]
    setup = (f"{s.step_steps} steps of batch {s.step_batch_size} per variant after one warm-up, one step of each "
             f"in turn, from the train split of {url}; model preset {s.step_model}, "
             f"{'bf16 autocast' if bf16 else 'fp32'} as the Trainer runs it. Plain attention: llm/attention.py. "
             f"Padding: the share of the tokens run that are padding to a batch's longest row. The compute bound "
             f"counts the LLM's projections (forward and input gradient) and attention at the measured matmul speed")
    return result("Stage-two step time", setup, checks, measured, bound)
