#!/usr/bin/env python3
"""PyTorch reference for armt-grpo's maths, run by `crates/armt-grpo/tests/pytorch_reference.rs`.

Reads `<dir>/inputs.safetensors` and `<dir>/cases.json` (a list of GrpoConfig JSON objects, the
Rust field names), computes for every case and for float64 and float32:

* GRPO advantages per group (mean, unbiased std + epsilon; mean 0 / std 1 for a group of one),
* the total loss: clipped surrogate (low/high ratios, dual clip) - entropy_coeff * agg(H)
  + kl_coef * agg(KL), every term aggregated with the case's loss_agg_mode over the mask,
* its gradient w.r.t. the per-token log-probs and entropies (given as leaves), and
* its gradient w.r.t. the logits when log-probs and entropies are computed from them,

following the formulas published for verl (core_algos: agg_loss, kl_penalty, vanilla policy
loss) and written here independently, and saves them to `<dir>/outputs.safetensors`.

Usage: grpo.py DIR
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def advantages(rewards, groups, norm_by_std, eps):
    adv = torch.zeros_like(rewards)
    for g in torch.unique(groups):
        idx = (groups == g).nonzero().flatten()
        r = rewards[idx]
        if len(idx) == 1:
            mean, std = torch.tensor(0.0, dtype=r.dtype), torch.tensor(1.0, dtype=r.dtype)
        else:
            mean, std = r.mean(), r.std()  # torch.std is unbiased
        adv[idx] = (r - mean) / (std + eps) if norm_by_std else r - mean
    return adv


def agg(loss_mat, mask, mode, scale_factor):
    if mode == "token-mean":
        return (loss_mat * mask).sum() / mask.sum()
    seq_sum = (loss_mat * mask).sum(-1)
    count = mask.sum(-1)
    nonempty = (count > 0).to(loss_mat.dtype)
    n_seq = nonempty.sum()
    if mode == "seq-mean-token-sum":
        return (seq_sum * nonempty).sum() / n_seq
    if mode == "seq-mean-token-mean":
        return (seq_sum / (count + 1e-8) * nonempty).sum() / n_seq
    if mode == "seq-mean-token-sum-norm":
        denom = scale_factor if scale_factor is not None else loss_mat.shape[-1]
        return (seq_sum * nonempty).sum() / n_seq / denom
    raise ValueError(mode)


def kl(logp, ref, est):
    if est.endswith("+"):
        fwd = kl(logp, ref, est[:-1]).detach()
        k2 = 0.5 * (logp - ref) ** 2
        return k2 - k2.detach() + fwd
    d = logp - ref
    if est in ("k1", "kl"):
        return d
    if est == "abs":
        return d.abs()
    if est in ("k2", "mse"):
        return 0.5 * d**2
    if est in ("low_var_kl", "k3"):
        x = torch.clamp(ref - logp, -20, 20)
        return torch.clamp(torch.exp(x) - x - 1, -10, 10)
    raise ValueError(est)


def total_loss(cfg, logp, old, adv_tok, mask, ent, ref):
    log_ratio = torch.clamp(logp - old, -20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -adv_tok * ratio
    clipped = -adv_tok * torch.clamp(ratio, 1 - cfg["clip_ratio_low"], 1 + cfg["clip_ratio_high"])
    pg = torch.maximum(unclipped, clipped)
    dual_hit = torch.zeros_like(pg, dtype=torch.bool)
    if cfg["clip_ratio_c"] is not None:
        cap = -adv_tok * cfg["clip_ratio_c"]
        dual_hit = (pg > cap) & (adv_tok < 0)
        pg = torch.where(adv_tok < 0, torch.minimum(pg, cap), pg)
    mode, scale = cfg["loss_agg_mode"], cfg["loss_scale_factor"]
    loss = agg(pg, mask, mode, scale)
    if cfg["entropy_coeff"] != 0:
        loss = loss - cfg["entropy_coeff"] * agg(ent, mask, mode, scale)
    if cfg["kl_coef"] != 0:
        loss = loss + cfg["kl_coef"] * agg(kl(logp, ref, cfg["kl_estimator"]), mask, mode, scale)
    n = mask.sum()
    stats = {
        "clipfrac": ((clipped > unclipped).to(mask.dtype) * mask).sum() / n,
        "clipfrac_dual": (dual_hit.to(mask.dtype) * mask).sum() / n,
        "ppo_kl": (-log_ratio * mask).sum() / n,
    }
    return loss, stats


def run(inputs, cfg, dtype, k, out):
    f = lambda name: inputs[name].to(dtype)
    logits_in, old, ref, mask = f("logits"), f("old_log_probs"), f("ref_log_probs"), f("mask")
    targets = inputs["targets"].long()
    adv = advantages(f("rewards"), inputs["groups"].long(), cfg["norm_adv_by_std"], cfg["epsilon"])
    adv_tok = adv[:, None] * mask

    # Log-probs and entropies from logits (log_softmax + gather; H = -sum p log p).
    logits = logits_in.clone().requires_grad_(True)
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    ent = -(torch.softmax(logits, -1) * logp_all).sum(-1)

    # 1) Gradients w.r.t. log-probs and entropies, as leaves.
    logp_leaf = logp.detach().clone().requires_grad_(True)
    ent_leaf = ent.detach().clone().requires_grad_(True)
    loss, stats = total_loss(cfg, logp_leaf, old, adv_tok, mask, ent_leaf, ref)
    loss.backward()
    # 2) Gradient w.r.t. the logits, through the log-prob and entropy computations.
    loss2, _ = total_loss(cfg, logp, old, adv_tok, mask, ent, ref)
    loss2.backward()

    tag = f"{k}_{'f64' if dtype == torch.float64 else 'f32'}"
    out[f"adv_{tag}"] = adv
    out[f"loss_{tag}"] = loss.detach().reshape(1)
    out[f"grad_logp_{tag}"] = logp_leaf.grad
    out[f"grad_ent_{tag}"] = ent_leaf.grad if ent_leaf.grad is not None else torch.zeros_like(ent_leaf)
    out[f"grad_logits_{tag}"] = logits.grad
    out[f"logp_{tag}"] = logp.detach()
    out[f"ent_{tag}"] = ent.detach()
    for name, v in stats.items():
        out[f"{name}_{tag}"] = v.detach().reshape(1)


def main():
    d = Path(sys.argv[1])
    inputs = load_file(str(d / "inputs.safetensors"))
    cases = json.loads((d / "cases.json").read_text())
    out = {}
    for k, cfg in enumerate(cases):
        for dtype in (torch.float64, torch.float32):
            run(inputs, cfg, dtype, k, out)
    save_file({name: t.contiguous() for name, t in out.items()}, str(d / "outputs.safetensors"))
    print(f"grpo.py: {len(cases)} cases, torch {torch.__version__}")


if __name__ == "__main__":
    main()
