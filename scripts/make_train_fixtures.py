#!/usr/bin/env python3
"""Reference numbers for the SFT and DPO losses, metrics, gradients and per-row log-probs.

Uses transformers + PEFT for the model (tests/fixtures/models/tiny-llama and its adapter, made
by make_fixtures.py) and TRL's definitions, written out below, for tokenization and losses:

  prompt ids     = template(prompt, add_generation_prompt=True)
  completion ids = template(prompt + completion)[len(prompt ids):]
  logp(seq)      = sum of the completion tokens' log-probs
  Δ = (logp_c − ref_c) − (logp_r − ref_r)
  sigmoid  −logσ(βΔ)                         robust ((1−ε)(−logσ(βΔ)) + ε logσ(−βΔ)) / (1−2ε)
  hinge    relu(1 − βΔ)                       ipo    (Δ_avg − 1/(2β))², log ratios averaged over tokens
  (TRL 1.16: sigmoid ignores label_smoothing, and IPO's rewards and logps metrics are sums; the
  other loss types are checked against TRL's own code by make_objective_fixtures.py)
  rpo      loss + α · mean NLL of the chosen completion tokens
  rewards/chosen = β (logp_c − ref_c) ...; accuracies = mean(chosen reward > rejected reward)

Writes tests/fixtures/train/{prefs.jsonl, sft.jsonl, expected_dpo.json, expected_dpo.safetensors,
expected_sft.safetensors}.
"""
import json
import pathlib

import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
MODEL = ROOT / "models" / "tiny-llama"
OUT = ROOT / "train"

U = lambda c: {"role": "user", "content": c}
A = lambda c: {"role": "assistant", "content": c}
S = lambda c: {"role": "system", "content": c}

PREFS = [
    {"prompt": [U("2+3=?")], "chosen": [A("5")], "rejected": [A("6")]},
    {"prompt": [S("be brief"), U("capital of France?")], "chosen": [A("Paris.")], "rejected": [A("Rome.")]},
    {"prompt": [U("4*2=?")], "chosen": [A("8")], "rejected": [A("it is 9, I think")]},
    # implicit prompt: whole conversations, the shared leading messages are the prompt
    {"chosen": [U("7-3=?"), A("4")], "rejected": [U("7-3=?"), A("3")]},
    {"prompt": [U("hi"), A("hello!"), U("9+1=?")], "chosen": [A("10")], "rejected": [A("11")]},
]
SFT = [
    {"prompt": [U("1+1=?")], "completion": [A("2")]},
    {"prompt": [U("capital of Italy?")], "completion": [A("Rome.")]},
    {"prompt": [S("answer in words"), U("3+3=?")], "completion": [A("six")]},
]


def split_implicit(row):
    if "prompt" in row:
        return row["prompt"], row["chosen"], row["rejected"]
    n = 0
    while row["chosen"][n] == row["rejected"][n]:
        n += 1
    return row["chosen"][:n], row["chosen"][n:], row["rejected"][n:]


def encode(tok, messages, gen):
    text = tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
    return tok(text, add_special_tokens=False).input_ids


def completion_ids(tok, prompt, completion):
    p = encode(tok, prompt, True)
    full = encode(tok, prompt + completion, False)
    assert full[: len(p)] == p, "prompt is not a prefix"
    return p, full[len(p):]


def batch(seqs, pad):
    """Right-padded ids, attention mask and completion (target) mask, as in TRL's DPO collator."""
    T = max(len(p) + len(c) for p, c in seqs)
    ids = torch.full((len(seqs), T), pad)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    loss = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, (p, c) in enumerate(seqs):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        attn[i, :n] = 1
        loss[i, len(p):n] = 1
    return ids, attn, loss


def token_logps(model, ids, attn, loss_mask):
    logits = model(input_ids=ids, attention_mask=attn).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    m = loss_mask[:, 1:].float()
    return logp, m, logits[:, :-1]


def dpo_loss(kind, beta, eps, pc, pr, rc, rr):
    d = (pc - rc) - (pr - rr)
    if kind == "sigmoid":
        return -F.logsigmoid(beta * d)
    if kind == "robust":
        return (-F.logsigmoid(beta * d) * (1 - eps) + F.logsigmoid(-beta * d) * eps) / (1 - 2 * eps)
    if kind == "hinge":
        return torch.relu(1 - beta * d)
    if kind == "ipo":
        return (d - 1 / (2 * beta)) ** 2
    raise ValueError(kind)


CASES = [
    ("sigmoid", dict(loss_type="sigmoid", beta=0.1, label_smoothing=0.0)),
    ("robust", dict(loss_type="robust", beta=0.1, label_smoothing=0.1)),
    ("hinge", dict(loss_type="hinge", beta=2.0, label_smoothing=0.0)),
    ("ipo", dict(loss_type="ipo", beta=0.1, label_smoothing=0.0)),
    ("rpo", dict(loss_type="sigmoid", beta=0.1, label_smoothing=0.0, rpo_alpha=0.5)),
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "prefs.jsonl", "w") as f:
        for r in PREFS:
            f.write(json.dumps(r) + "\n")
    with open(OUT / "sft.jsonl", "w") as f:
        for r in SFT:
            f.write(json.dumps(r) + "\n")
    tok = AutoTokenizer.from_pretrained(MODEL)
    base = AutoModelForCausalLM.from_pretrained(MODEL, attn_implementation="eager", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, MODEL / "adapter", is_trainable=True)
    model.train()  # lora_dropout is 0
    params = {n.replace(".default", ""): p for n, p in model.named_parameters() if p.requires_grad}

    rows = [split_implicit(r) for r in PREFS]
    chosen = [completion_ids(tok, p, c) for p, c, _ in rows]
    rejected = [completion_ids(tok, p, r) for p, _, r in rows]
    ids, attn, lm = batch(chosen + rejected, tok.pad_token_id)
    n = len(rows)
    expected = {"dpo.input_ids": ids, "dpo.loss_mask": lm}
    with torch.no_grad(), model.disable_adapter():
        ref_tok, m, _ = token_logps(model, ids, attn, lm)
    ref_sum = (ref_tok * m).sum(-1)
    counts = m.sum(-1)
    metrics = {}
    for name, case in CASES:
        model.zero_grad()
        pol_tok, m, logits = token_logps(model, ids, attn, lm)
        pol_sum = (pol_tok * m).sum(-1)
        avg = case["loss_type"] == "ipo"
        pol, ref = pol_sum, ref_sum
        beta = case["beta"]
        lp, lr = (pol / counts, ref / counts) if avg else (pol, ref)
        losses = dpo_loss(case["loss_type"], beta, case["label_smoothing"], lp[:n], lp[n:], lr[:n], lr[n:])
        loss = losses.mean()
        out = {}
        if "rpo_alpha" in case:
            nll = -(pol_tok[:n] * m[:n]).sum() / m[:n].sum()
            out["nll_loss"] = float(nll)
            loss = loss + case["rpo_alpha"] * nll
        loss.backward()
        cr = beta * (pol[:n] - ref[:n]).detach()
        rr = beta * (pol[n:] - ref[n:]).detach()
        lmask = m.bool()
        out.update({
            "loss": float(loss),
            "rewards/chosen": float(cr.mean()),
            "rewards/rejected": float(rr.mean()),
            "rewards/accuracies": float((cr > rr).float().mean()),
            "rewards/margins": float((cr - rr).mean()),
            "logps/chosen": float(pol[:n].mean()),
            "logps/rejected": float(pol[n:].mean()),
            "logits/chosen": float(logits[:n][lmask[:n]].mean()),
            "logits/rejected": float(logits[n:][lmask[n:]].mean()),
        })
        metrics[name] = {"config": case, "metrics": out}
        for k, p in params.items():
            expected[f"{name}.grad.{k}"] = p.grad.detach().clone()
    with torch.no_grad():
        pol_tok, m, _ = token_logps(model, ids, attn, lm)
    expected["per_row.chosen_logps"] = (pol_tok * m).sum(-1)[:n].contiguous()
    expected["per_row.rejected_logps"] = (pol_tok * m).sum(-1)[n:].contiguous()
    expected["per_row.ref_chosen_logps"] = ref_sum[:n].contiguous()
    expected["per_row.ref_rejected_logps"] = ref_sum[n:].contiguous()
    save_file({k: v.contiguous() for k, v in expected.items()}, OUT / "expected_dpo.safetensors",
              metadata={"format": "pt"})
    (OUT / "expected_dpo.json").write_text(json.dumps(metrics, indent=1) + "\n")

    # SFT: mean NLL over the completion tokens of the whole batch.
    seqs = [completion_ids(tok, r["prompt"], r["completion"]) for r in SFT]
    ids, attn, lm = batch(seqs, tok.pad_token_id)
    model.zero_grad()
    pol_tok, m, _ = token_logps(model, ids, attn, lm)
    loss = -(pol_tok * m).sum() / m.sum()
    loss.backward()
    sft = {"sft.input_ids": ids, "sft.loss_mask": lm, "sft.loss": loss.detach().reshape(1)}
    for k, p in params.items():
        sft[f"sft.grad.{k}"] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in sft.items()}, OUT / "expected_sft.safetensors",
              metadata={"format": "pt"})
    print("dpo", {k: v["metrics"]["loss"] for k, v in metrics.items()}, "sft", float(loss))


if __name__ == "__main__":
    main()
