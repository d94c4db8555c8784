"""Golden numbers for src/rl (tests/it/game_rl.rs pastes them).

Run from the repository root, in a venv made from scripts/requirements-golden.txt:
    python scripts/golden_rl.py
Reference semantics (method.md §3.1, OpenRLHF as forked by selfplay-redteaming):
  - k1 KL: kl_t = logp_old - logp_ref                      (models/utils.compute_approx_kl)
  - token rewards: -beta*kl_t, clamp(r,-10,10) added at the last response token (compute_reward)
  - returns: reversed cumulative sum, gamma = 1            (get_cumulative_returns)
  - per-role normalisation: mean over the role's tokens, var = mean((x-mean)^2) (population),
    rstd = clamp(var, min=1e-8).rsqrt()                    (replay_buffer.normalize)
  - PPO-clip: ratio = exp(logp - old), loss = -min(r*A, clip(r,1-eps,1+eps)*A), token mean
    over all response tokens of the micro-batch            (models/loss.PolicyLoss, packed)
  - SFT: cross-entropy mean over target tokens             (GPTLMLoss)
  - Adam: torch.optim.Adam(betas=(0.9,0.95), eps=1e-8, weight_decay=0) after
    torch.nn.utils.clip_grad_norm_(params, 1.0)
  - LR: transformers get_cosine_with_min_lr_schedule_with_warmup (OpenRLHF cosine_with_min_lr)
"""
import math

import torch
import transformers
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

torch.set_default_dtype(torch.float64)


def fmt(xs):
    return "[" + ", ".join(repr(float(x)) for x in xs) + "]"


print("# torch", torch.__version__, "transformers", transformers.__version__)

# ---------------------------------------------------------------- advantages
roles = ["attacker", "defender", "attacker", "defender"]
old = [[-1.2, -0.7, -2.3], [-0.4, -1.9], [-0.9, -1.1, -0.3, -2.0], [-1.5]]
ref = [[-1.0, -0.9, -2.0], [-0.6, -1.5], [-1.3, -1.0, -0.8, -1.7], [-1.1]]
reward = [2.5, -1.0, 12.0, 0.5]
beta = 0.01
returns = []
for o, r_, R in zip(old, ref, reward):
    kl = torch.tensor(o) - torch.tensor(r_)
    tok = -beta * kl
    tok[-1] += max(-10.0, min(10.0, R))
    ret = torch.flip(torch.cumsum(torch.flip(tok, [0]), 0), [0])
    print("kl", fmt(kl))
    print("token_rewards", fmt(tok))
    print("returns", fmt(ret))
    returns.append(ret)
for role in ["attacker", "defender"]:
    idx = [i for i, r in enumerate(roles) if r == role]
    vec = torch.cat([returns[i] for i in idx])
    mean = vec.sum() / vec.numel()
    var = ((vec - mean) ** 2).sum() / vec.numel()
    rstd = var.clamp(min=1e-8).rsqrt()
    print(role, "mean", repr(mean.item()), "var", repr(var.item()))
    for i in idx:
        print("adv", i, fmt((returns[i] - mean) * rstd))

# ---------------------------------------------------------------- loss and its gradient
B, L, V = 2, 5, 4
ids = torch.tensor([[1, 2, 3, 0, 2], [3, 1, 0, 0, 0]])
prompt_len = [2, 1]
length = [5, 3]
logits = (torch.sin(torch.arange(B * L * V, dtype=torch.float64) * 0.37) * 2.0).reshape(B, L, V)
logits.requires_grad_(True)
logp = torch.log_softmax(logits[:, :-1, :], -1).gather(2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
mask = torch.zeros(B, L - 1)
for b in range(B):
    mask[b, prompt_len[b] - 1 : length[b] - 1] = 1.0
delta = torch.tensor([[0.0, 0.3, -0.25, 0.05], [0.1, -0.4, 0.0, 0.0]])
old_lp = logp.detach() + delta
adv = torch.tensor([[0.0, 1.0, -0.5, 2.0], [-1.5, 0.7, 0.0, 0.0]])
eps = 0.2
log_ratio = (logp - old_lp) * mask
ratio = log_ratio.exp()
surr1 = ratio * adv
surr2 = ratio.clamp(1 - eps, 1 + eps) * adv
tok_loss = -torch.min(surr1, surr2)
loss = (tok_loss * mask).sum() / mask.sum()
clipfrac = (((ratio - 1).abs() > eps).double() * mask).sum() / mask.sum()
loss.backward()
print("logp", fmt(logp.detach().flatten()))
print("pg_loss", repr(loss.item()), "clipfrac", repr(clipfrac.item()))
print("pg_grad_logits", fmt(logits.grad.flatten()))
logits.grad = None
logp = torch.log_softmax(logits[:, :-1, :], -1).gather(2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
sft = -(logp * mask).sum() / mask.sum()
# Same number from the library's cross-entropy with ignore_index, as GPTLMLoss computes it.
labels = ids.clone()
for b in range(B):
    labels[b, : prompt_len[b]] = -100
    labels[b, length[b] :] = -100
ce = torch.nn.functional.cross_entropy(logits[:, :-1, :].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
assert abs(ce.item() - sft.item()) < 1e-12
sft.backward()
print("sft_loss", repr(sft.item()))
print("sft_grad_logits", fmt(logits.grad.flatten()))

# ---------------------------------------------------------------- Adam + clipping
torch.set_default_dtype(torch.float32)
p1 = torch.nn.Parameter(torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.25, -0.75]]))
p2 = torch.nn.Parameter(torch.tensor([1.5, -0.5, 0.1, -2.0]))
opt = torch.optim.Adam([p1, p2], lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
grads = [
    ([[0.3, -0.2, 0.1], [0.05, 0.0, -0.4]], [0.2, 0.1, -0.3, 0.05]),  # norm < 1: no clipping
    ([[3.0, -2.0, 1.0], [0.5, 0.0, -4.0]], [2.0, 1.0, -3.0, 0.5]),  # norm > 1: clipped
    ([[-0.6, 0.4, 0.9], [1.2, -0.3, 0.2]], [-0.1, 0.7, 0.3, -0.9]),
]
lrs = [1e-3, 5e-4, 2e-4]
for (g1, g2), lr in zip(grads, lrs):
    for g in opt.param_groups:
        g["lr"] = lr
    p1.grad = torch.tensor(g1)
    p2.grad = torch.tensor(g2)
    norm = torch.nn.utils.clip_grad_norm_([p1, p2], 1.0)
    opt.step()
    print("adam_norm", repr(norm.item()))
    print("adam_p1", fmt(p1.detach().flatten()))
    print("adam_p2", fmt(p2.detach().flatten()))
st = opt.state[p1]
print("adam_p1_exp_avg", fmt(st["exp_avg"].flatten()))
print("adam_p1_exp_avg_sq", fmt(st["exp_avg_sq"].flatten()))

# ---------------------------------------------------------------- LR schedule
for base, warm, total, steps in [
    (1.0, 3, 20, list(range(0, 26))),
    (5e-7, math.ceil(1875 * 0.03), 1875, [0, 1, 56, 57, 58, 200, 1000, 1874, 1875, 1900]),
]:
    p = torch.nn.Parameter(torch.zeros(1))
    o = torch.optim.Adam([p], lr=base)
    s = get_cosine_with_min_lr_schedule_with_warmup(o, num_warmup_steps=warm, num_training_steps=total, min_lr=base * 0.1)
    vals = {}
    for k in range(max(steps) + 1):
        vals[k] = s.get_last_lr()[0]
        o.step()
        s.step()
    print("lr", base, warm, total, fmt([vals[k] for k in steps]))
print("done")
