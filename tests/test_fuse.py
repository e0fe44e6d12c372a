"""The fusion network: shapes, masks (masked data cannot change the output), gates, the balance and z-losses."""
import math

import pytest
import torch

from egmf.fuse import EXPERTS, FusionConfig, FusionNetwork
from egmf.fuse.experts import ContextExpert, CorrelationExpert, LocalExpert
from egmf.fuse.gating import balance_loss, z_loss

DIMS = {"audio": 12, "visual": 20, "text": 8}
STEPS = {"audio": 9, "visual": 5, "text": 7}
B, H, C = 4, 24, 3


def make_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(B, STEPS[m], d, generator=g) for m, d in DIMS.items()}
    masks = {m: torch.ones(B, STEPS[m], dtype=torch.bool) for m in DIMS}
    masks["audio"][1] = False  # row 1 has no audio
    masks["visual"][0, 2:] = False  # row 0's video is short
    masks["text"][2, 4:] = False
    context = {m: torch.randn(B, C, d, generator=g) for m, d in DIMS.items()}
    context_mask = torch.tensor([[True, True, True], [False, True, True], [False, False, False], [False, False, True]])
    return features, masks, context, context_mask, torch.tensor([0, 1, 0, 1])


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return FusionNetwork(FusionConfig(d_model=32, n_heads=4, n_tokens=3), DIMS, H, n_tasks=2, out_scale=0.7).eval()


def corrupt_masked(features, masks, context, context_mask):
    """Every value a mask hides becomes garbage (NaN, huge numbers)."""
    features = {m: f.clone() for m, f in features.items()}
    context = {m: c.clone() for m, c in context.items()}
    for m in features:
        features[m][~masks[m]] = float("nan")
        context[m][~context_mask] = 1e6
    return features, context


def test_shapes_and_gate_weights(net):
    features, masks, context, context_mask, task = make_inputs()
    out = net(features, masks, context, context_mask, task)
    assert out.tokens.shape == (B, 3, H)
    assert out.expert_weights.shape == (B, len(EXPERTS))
    assert torch.allclose(out.expert_weights.sum(-1), torch.ones(B))
    assert out.modality_gates.shape == (B, len(EXPERTS), len(DIMS))
    assert torch.allclose(out.modality_gates.sum(-1), torch.ones(B, len(EXPERTS)))
    assert torch.all(out.modality_gates[1, :, 0] == 0)  # row 1 has no audio: no expert may weigh it
    assert torch.all(out.modality_gates[[0, 2, 3], :, 0] > 0)
    assert out.aux_loss.ndim == 0 and out.aux_loss >= 0
    # out_scale: pseudo tokens start with the RMS of the LLM's embedding table
    assert out.tokens.pow(2).mean().sqrt().item() == pytest.approx(0.7, rel=0.05)


def test_masked_values_cannot_change_the_output(net):
    features, masks, context, context_mask, task = make_inputs()
    reference = net(features, masks, context, context_mask, task)
    garbage_features, garbage_context = corrupt_masked(features, masks, context, context_mask)
    out = net(garbage_features, masks, garbage_context, context_mask, task)
    assert torch.isfinite(out.tokens).all()
    torch.testing.assert_close(out.tokens, reference.tokens, rtol=0, atol=0)
    torch.testing.assert_close(out.expert_weights, reference.expert_weights, rtol=0, atol=0)


@pytest.mark.parametrize("expert", ["local", "correlation", "context"])
def test_each_expert_keeps_shapes_and_masks(expert):
    torch.manual_seed(1)
    d, modalities = 16, list(DIMS)
    module = {"local": lambda: LocalExpert(modalities, d, 3, 2, 0.0),
              "correlation": lambda: CorrelationExpert(modalities, d, 2, 0.0),
              "context": lambda: ContextExpert(d, 2, 1, 0.0)}[expert]().eval()
    _, masks, _, _, _ = make_inputs()
    mask_list = [masks[m] for m in modalities]
    tokens = [torch.randn(B, STEPS[m], d) * masks[m].unsqueeze(-1) for m in modalities]
    turns, turn_mask = torch.randn(B, 2, d), torch.tensor([[True, False]] * B)
    context = {"turns": turns, "turn_mask": turn_mask, "turn_modality": torch.tensor([0, 2])}
    outputs, gate = module(tokens, mask_list, **context)
    assert [o.shape for o in outputs] == [t.shape for t in tokens]
    assert gate.shape == (B, len(modalities)) and torch.all(gate[1, 0] == 0)
    for o, m in zip(outputs, mask_list):
        assert torch.all(o[~m] == 0)  # masked steps stay exact zeros
    # A masked token or turn, whatever it holds, changes nothing.
    noisy = [torch.where(m.unsqueeze(-1), t, torch.randn_like(t) * 100) for t, m in zip(tokens, mask_list)]
    noisy_turns = turns.clone()
    noisy_turns[:, 1] = 1e4
    again, _ = module(noisy, mask_list, **{**context, "turns": noisy_turns})
    for a, b in zip(outputs, again):
        torch.testing.assert_close(a, b)


def force_modality_gates(net, weights):
    """Every expert's modality gate returns `weights` (M,) for every row; returns the hooks to remove."""
    return [expert.gate.register_forward_hook(lambda module, args, out: weights.expand_as(out).clone())
            for expert in net.experts]


@pytest.mark.parametrize("silenced", list(DIMS))
def test_a_modality_gated_to_zero_has_no_influence_on_the_pseudo_tokens(net, silenced):
    features, masks, context, context_mask, task = make_inputs()
    index = list(DIMS).index(silenced)
    altered = {**features, silenced: features[silenced] + torch.randn_like(features[silenced]) * 3}
    altered_context = {**context, silenced: context[silenced] * -2}
    uniform = torch.full((len(DIMS),), 1 / len(DIMS))
    closed = torch.tensor([0.0 if i == index else 0.5 for i in range(len(DIMS))])
    for weights, should_change in [(uniform, True), (closed, False)]:
        hooks = force_modality_gates(net, weights)
        try:
            reference = net(features, masks, context, context_mask, task)
            out = net(altered, masks, altered_context, context_mask, task)
        finally:
            for hook in hooks:
                hook.remove()
        assert torch.isfinite(out.tokens).all()
        assert (not torch.allclose(out.tokens, reference.tokens, atol=1e-5)) is should_change
        if not should_change:
            assert torch.all(out.modality_weights[:, index] == 0)
            torch.testing.assert_close(out.expert_weights, reference.expert_weights, rtol=0, atol=0)


def test_modality_weights_survive_normalisation(net):
    """A modality's weight must change what the pseudo tokens hold, not only the scale a LayerNorm removes."""
    features, masks, context, context_mask, task = make_inputs()
    outputs = []
    for weights in ([0.8, 0.1, 0.1], [0.1, 0.1, 0.8]):
        hooks = force_modality_gates(net, torch.tensor(weights))
        try:
            outputs.append(net(features, masks, context, context_mask, task))
        finally:
            for hook in hooks:
                hook.remove()
    assert (outputs[0].tokens - outputs[1].tokens).abs().max() > 0.1
    torch.testing.assert_close(outputs[0].modality_weights.sum(-1), torch.ones(B))


def test_context_and_task_are_used(net):
    features, masks, context, context_mask, task = make_inputs()
    reference = net(features, masks, context, context_mask, task).tokens
    shifted = {m: c + 1.0 for m, c in context.items()}
    changed = net(features, masks, shifted, context_mask, task).tokens
    has_context = context_mask.any(-1)
    assert not torch.allclose(changed[has_context], reference[has_context])
    torch.testing.assert_close(changed[~has_context], reference[~has_context], rtol=0, atol=0)
    other_task = net(features, masks, context, context_mask, 1 - task).tokens
    assert not torch.allclose(other_task, reference)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = FusionNetwork(FusionConfig(d_model=16, n_heads=2, n_tokens=2), DIMS, H, n_tasks=2)
    out = net(*make_inputs())
    (out.tokens.square().mean() + out.aux_loss + out.modality_gates.square().sum()).backward()
    dead = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def text_only(inputs):
    features, masks, context, context_mask, task = inputs
    return {"text": features["text"]}, {"text": masks["text"]}, {"text": context["text"]}, context_mask, task


def test_with_one_modality_every_parameter_reaches_the_loss():
    # DDP (no find_unused_parameters) fails at its second step on a parameter outside the autograd graph,
    # as the correlation expert's norm was with nothing to correlate (`egmf-train --modalities text`).
    torch.manual_seed(0)
    net = FusionNetwork(FusionConfig(d_model=16, n_heads=2, n_tokens=2), {"text": DIMS["text"]}, H, n_tasks=2)
    out = net(*text_only(make_inputs()))
    (out.tokens.square().mean() + out.aux_loss).backward()
    assert not [name for name, p in net.named_parameters() if p.grad is None]


def test_a_row_without_any_modality_gives_finite_tokens(net):
    features, masks, context, context_mask, task = make_inputs()
    for m in masks:
        masks[m][3] = False
    out = net(features, masks, context, torch.zeros_like(context_mask), task)
    assert torch.isfinite(out.tokens).all() and torch.all(out.modality_gates[3] == 0)


def test_corpora_without_dialogues_pass_zero_preceding_turns(net):
    features, masks, _, _, task = make_inputs()
    no_turns = {m: torch.zeros(B, 0, d) for m, d in DIMS.items()}
    out = net(features, masks, no_turns, torch.zeros(B, 0, dtype=torch.bool), task)
    assert out.tokens.shape == (B, 3, H) and torch.isfinite(out.tokens).all()


def test_balance_loss_is_zero_when_balanced_and_log_e_when_collapsed():
    assert balance_loss(torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])).item() == \
        pytest.approx(0.0, abs=1e-6)
    assert balance_loss(torch.tensor([[1.0, 0.0, 0.0]] * 4)).item() == pytest.approx(math.log(3), rel=1e-4)
    collapsed = torch.tensor([[2.0, 0.0, 0.0]] * 4, requires_grad=True)
    balance_loss(torch.softmax(collapsed, -1)).backward()
    assert collapsed.grad[0, 0] > 0  # the loss pushes the dominant expert's logit down


def test_z_loss_pulls_a_saturated_gate_back_where_the_balance_loss_cannot():
    assert z_loss(torch.zeros(4, 3)).item() == pytest.approx(math.log(3) ** 2)
    saturated = torch.tensor([[20.0, 0.0, 0.0]] * 4, requires_grad=True)
    balance_loss(torch.softmax(saturated, -1)).backward()
    assert saturated.grad.abs().max() < 1e-6  # softmax has saturated: the balance loss no longer reaches the logits
    saturated.grad = None
    z_loss(saturated).backward()
    assert saturated.grad[0, 0].item() == pytest.approx(2 * 20 / 4, rel=1e-4)  # d/dx mean(lse^2) = 2 lse p / rows


def test_z_weight_adds_the_expert_gates_z_loss_to_the_aux_loss():
    inputs = make_inputs()
    outputs, logits = [], []
    for z_weight in (0.0, 0.5):
        torch.manual_seed(0)
        net = FusionNetwork(FusionConfig(d_model=32, n_heads=4, n_tokens=3, z_weight=z_weight), DIMS, H, 2, 0.7).eval()
        net.expert_gate.register_forward_hook(lambda module, args, out: logits.append(out))
        outputs.append(net(*inputs))
    assert torch.equal(logits[0], logits[1]) and torch.equal(outputs[0].tokens, outputs[1].tokens)
    assert (outputs[1].aux_loss - outputs[0].aux_loss).item() == pytest.approx(0.5 * z_loss(logits[0]).item(), rel=1e-5)
    torch.manual_seed(0)
    uniform = FusionNetwork(FusionConfig(d_model=32, n_heads=4, n_tokens=3, z_weight=0.5, uniform_gates=True), DIMS,
                            H, 2, 0.7).eval()
    assert uniform(*inputs).aux_loss.item() == 0  # fixed gates: nothing to balance, no logits in use


def test_missing_modality_in_batch_and_bad_config_are_explained(net):
    features, masks, context, context_mask, task = make_inputs()
    del features["visual"]
    with pytest.raises(KeyError, match="visual"):
        net(features, masks, context, context_mask, task)
    with pytest.raises(ValueError, match="multiple of n_heads"):
        FusionConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="odd"):
        FusionConfig(local_kernel=4)


def test_input_statistics_standardise_each_dimension_and_a_huge_dimension_cannot_dominate():
    torch.manual_seed(0)
    dims = {"audio": 6}
    net = FusionNetwork(FusionConfig(d_model=16, n_heads=4, n_tokens=2, dropout=0.0), dims, 8, n_tasks=1).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 6, generator=g)
    scale = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 500.0])  # one outlier dimension, as Whisper's hidden states have
    shift = torch.arange(6.0)
    masks = {"audio": torch.ones(3, 5, dtype=torch.bool)}
    args = ({"audio": torch.zeros(3, 1, 6)}, torch.zeros(3, 1, dtype=torch.bool), torch.zeros(3, dtype=torch.long))
    plain = net.projection({"audio": x}, masks)[0]
    net.projection.set_statistics({"audio": (shift, scale)})
    assert torch.allclose(net.projection({"audio": x * scale + shift}, masks)[0], plain, atol=1e-5)
    state = net.state_dict()
    assert torch.equal(state["projection.std_audio"], scale) and torch.equal(state["projection.mean_audio"], shift)
    # Without the statistics the outlier dimension alone decides the tokens: the others can change freely.
    raw = FusionNetwork(FusionConfig(d_model=16, n_heads=4, n_tokens=2, dropout=0.0), dims, 8, n_tasks=1).eval()
    raw.load_state_dict({k: v for k, v in state.items() if "_audio" not in k or not k.startswith("projection.")},
                        strict=False)
    other = x.clone()
    other[..., :5] = torch.randn(3, 5, 5, generator=g)
    moved = lambda model: (model({"audio": x * scale + shift}, masks, *args).tokens
                           - model({"audio": other * scale + shift}, masks, *args).tokens).abs().mean()
    assert moved(net) > 20 * moved(raw)
