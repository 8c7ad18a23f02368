"""klgrad.torch.kl_loss and kl_penalty in a PyTorch policy: one optimiser step of a small
policy (a linear layer to logits over a small vocabulary, log_softmax + gather) with
kl_loss, its parameter gradients against autograd of each trainer's own formula written
here in torch (from docs/presets.md, our notation), in float32 and float64."""
import copy

import pytest

torch = pytest.importorskip("torch")

import klgrad  # noqa: E402
import klgrad.torch as kt  # noqa: E402

BETA = 0.04


# ---- the trainers' formulas, per token (lp carries gradient; lr, lb are data) -------------

def verl_low_var_kl(lp, lr, lb):
    x = torch.clamp(lr - lp, -20, 20)
    return torch.clamp(torch.exp(x) - x - 1, -10, 10)


def openrlhf_k3(lp, lr, lb):
    s = lp - lr
    return torch.clamp(torch.exp(-s) - 1 + s, -10, 10)


def trl_bias_corrected_k3(lp, lr, lb):
    return (torch.exp(lr - lp) - (lr - lp) - 1) * torch.exp(lp - lb)


def nemo_rl_default_k3(lp, lr, lb):  # w = exp(lp - sg(lp)): lb is lp detached
    x = lr - lp
    xc = torch.clamp(x, -20, 20)
    w = torch.exp(lp - lb)
    w = torch.where(x != xc, w.detach(), w)
    return torch.clamp(w * (torch.exp(xc) - 1 - xc), -10, 10)


def k1_in_reward_to_go(lp, lr, lb, mask):
    """REINFORCE with the reward -beta k1 per token: the surrogate lp_t * sg(sum_{t' >= t} k1)."""
    k1 = (lp - lr).detach() * mask
    to_go = torch.flip(torch.cumsum(torch.flip(k1, [1]), 1), [1])
    return lp * to_go


# (spec, per-token formula, behaviour: None, "detached logp" or "offset")
CASES = [
    ("k3-as-loss,preset=verl", verl_low_var_kl, None),
    ("k3-as-loss,preset=openrlhf", openrlhf_k3, None),
    ("k3-as-loss,is=differentiable,preset=trl", trl_bias_corrected_k3, "offset"),
    ("k3-as-loss,preset=nemo-rl", nemo_rl_default_k3, "detached logp"),
]


class Policy(torch.nn.Module):
    def __init__(self, features, vocab, seed, dtype):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.head = torch.nn.Linear(features, vocab).to(dtype)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(vocab, features, generator=g, dtype=dtype))
            self.head.bias.copy_(torch.randn(vocab, generator=g, dtype=dtype))

    def forward(self, x, ids):
        logp = torch.log_softmax(self.head(x), dim=-1)
        return torch.gather(logp, -1, ids.unsqueeze(-1)).squeeze(-1)


def rollout(dtype, rows=4, steps=6, features=5, vocab=7):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(rows, steps, features, generator=g, dtype=dtype)
    ids = torch.randint(0, vocab, (rows, steps), generator=g)
    mask = torch.rand(rows, steps, generator=g) < 0.75
    mask[:, 0] = True
    policy = Policy(features, vocab, 11, dtype)
    reference = Policy(features, vocab, 12, dtype)
    with torch.no_grad():
        ref = reference(x, ids)
        behavior = policy(x, ids) + 0.1 * torch.randn(rows, steps, generator=g, dtype=dtype)
    return x, ids, mask, policy, ref, behavior


def gradients(policy, loss):
    policy.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in policy.parameters()]


def assert_gradients_close(got, expected, dtype):
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    for g, e in zip(got, expected):
        scale = e.abs().max().item()
        torch.testing.assert_close(g, e, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spec,formula,behavior_kind", CASES)
def test_one_optimiser_step_matches_the_trainer_formula(spec, formula, behavior_kind, dtype):
    x, ids, mask, policy, ref, behavior = rollout(dtype)
    twin = copy.deepcopy(policy)
    spec = f"{spec},agg=token-sum,beta={BETA}"

    logp = policy(x, ids)
    lb = {None: None, "offset": behavior, "detached logp": logp.detach()}[behavior_kind]
    loss, value = kt.kl_loss(spec, logp, ref, behavior=lb, mask=mask)
    assert loss.dim() == 0 and not value.requires_grad
    got = gradients(policy, loss)

    lp = twin(x, ids)
    lb_twin = {None: None, "offset": behavior, "detached logp": lp.detach()}[behavior_kind]
    per_token = formula(lp, ref, lb_twin)
    trainer_loss = BETA * (per_token * mask).sum()
    expected = gradients(twin, trainer_loss)

    assert loss.item() == pytest.approx(trainer_loss.item(), rel=1e-5 if dtype == torch.float32 else 1e-12)
    torch.testing.assert_close(value, torch.where(mask, per_token.detach(), torch.zeros_like(lp)),
                               rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-7)
    assert_gradients_close(got, expected, dtype)

    steps = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (policy, twin)]
    for s in steps:
        s.step()
    for p, q in zip(policy.parameters(), twin.parameters()):
        assert_gradients_close([p.detach()], [q.detach()], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k1_in_reward_to_go_matches_reinforce(dtype):
    x, ids, mask, policy, ref, _ = rollout(dtype)
    twin = copy.deepcopy(policy)
    loss, _ = kt.kl_loss(f"k1-in-reward,level=to-go,agg=token-sum,beta={BETA}",
                         policy(x, ids), ref, mask=mask)
    got = gradients(policy, loss)
    lp = twin(x, ids)
    expected = gradients(twin, BETA * (k1_in_reward_to_go(lp, ref, None, mask) * mask).sum())
    assert_gradients_close(got, expected, dtype)


def test_nothing_flows_into_ref_or_behavior():
    x, ids, mask, policy, ref, behavior = rollout(torch.float64)
    ref = ref.clone().requires_grad_(True)
    behavior = behavior.clone().requires_grad_(True)
    loss, _ = kt.kl_loss("k3-as-loss,is=differentiable", policy(x, ids), ref,
                         behavior=behavior, mask=mask)
    loss.backward()
    assert ref.grad is None and behavior.grad is None


def test_gradient_is_the_coefficient():
    _, _, mask, _, ref, _ = rollout(torch.float64)
    logp = (ref + 0.3).requires_grad_(True)
    loss, _ = kt.kl_loss("k3-as-loss,agg=seq-mean-token-mean", logp, ref, mask=mask)
    (2.5 * loss).backward()
    coef = klgrad.evaluate("k3-as-loss,agg=seq-mean-token-mean", logp.detach(), ref, mask=mask).coef
    torch.testing.assert_close(logp.grad, 2.5 * coef, rtol=0, atol=0)


def test_kl_penalty_is_beta_times_the_detached_value():
    _, _, mask, _, ref, _ = rollout(torch.float64)
    logp = (ref - 0.2).requires_grad_(True)
    penalty = kt.kl_penalty("k1-in-reward,beta=0.05", logp, ref, mask=mask)
    assert not penalty.requires_grad
    torch.testing.assert_close(penalty, torch.where(mask, 0.05 * (logp - ref).detach(),
                                                    torch.zeros_like(ref)))


@pytest.mark.parametrize("make_loss", ["kl_loss", "logits_loss"])
def test_backward_through_a_retained_graph(make_loss):
    """The first backward takes the kernel's gradient without a copy; each further backward
    through a retained graph reruns the kernel, so three backwards give three times the
    gradient (the oracle: klgrad.evaluate / logits_divergence called directly), and an input
    changed in place after the forward is refused as autograd refuses it."""
    g = torch.Generator().manual_seed(3)
    if make_loss == "kl_loss":
        ref = -torch.rand(3, 5, generator=g, dtype=torch.float64)
        x = (ref + 0.2 * torch.randn(3, 5, generator=g, dtype=torch.float64)).requires_grad_()
        loss, _ = kt.kl_loss("k3-as-loss", x, ref)
        once = klgrad.evaluate("k3-as-loss", x.detach(), ref).coef
    else:
        ref = torch.randn(3, 11, generator=g, dtype=torch.float64)
        x = torch.randn(3, 11, generator=g, dtype=torch.float64).requires_grad_()
        loss, _ = kt.logits_loss(x, ref)
        once = klgrad.logits_divergence(x.detach(), ref).grad
    loss.backward(retain_graph=True)
    (0.5 * loss).backward(retain_graph=True)
    loss.backward(retain_graph=True)
    torch.testing.assert_close(x.grad, 2.5 * once, rtol=1e-15, atol=0)
    with torch.no_grad():
        x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nemo_rl_detach_weight_with_the_on_policy_approximation_weight(dtype):
    """NeMo-RL detaches its weight where its input clamp (|x| > 20) binds. With its default
    weight exp(lp - sg(lp)) (value 1, gradient 1) the detach removes k3(x_c) ~ 4.9e8 from those
    tokens' coefficient. Its default output clamp (+-10) zeroes them anyway (k3 >= 19 beyond
    |x| = 20), so the detach shows with the output clamp off: the preset's clamp without
    value:-10:10. The oracle is the trainer's formula under torch autograd; the same formula
    without the detach must differ, or the test could not fail."""
    x, ids, mask, policy, ref, _ = rollout(dtype)
    with torch.no_grad():
        ref = ref.clone()
        ref[:, 1] -= 25.0  # log-ratios beyond the input clamp, both sides
        ref[:, 3] += 25.0
    twin = copy.deepcopy(policy)
    spec = f"k3-as-loss,preset=nemo-rl,clamp=log-ratio:-20:20/detach-weight,agg=token-sum,beta={BETA}"
    logp = policy(x, ids)
    loss, _ = kt.kl_loss(spec, logp, ref, behavior=logp.detach(), mask=mask)
    got = gradients(policy, loss)

    def trainer(lp, detach):
        xr = ref - lp
        xc = torch.clamp(xr, -20, 20)
        w = torch.exp(lp - lp.detach())
        if detach:
            w = torch.where(xr != xc, w.detach(), w)
        return BETA * ((w * (torch.exp(xc) - 1 - xc)) * mask).sum()

    expected = gradients(twin, trainer(twin(x, ids), True))
    assert_gradients_close(got, expected, dtype)
    without = gradients(twin, trainer(twin(x, ids), False))
    scale = max(e.abs().max().item() for e in expected)
    assert max((a - b).abs().max().item() for a, b in zip(without, expected)) > 1e3 * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nemo_rl_default_weight_needs_no_behavior(dtype):
    """preset=nemo-rl without behavior= is NeMo-RL's default weight exp(lp - sg(lp)): the
    trainer's formula with lb = sg(lp) under autograd is the oracle."""
    x, ids, mask, policy, ref, _ = rollout(dtype)
    twin = copy.deepcopy(policy)
    spec = f"k3-as-loss,preset=nemo-rl,agg=token-sum,beta={BETA}"
    loss, _ = kt.kl_loss(spec, policy(x, ids), ref, mask=mask)
    got = gradients(policy, loss)
    lp = twin(x, ids)
    expected = gradients(twin, BETA * (nemo_rl_default_k3(lp, ref, lp.detach()) * mask).sum())
    assert_gradients_close(got, expected, dtype)
