#!/usr/bin/env python3
"""Expected losses and metrics of every preference objective, from TRL's own loss code.

Pinned: trl==1.16.*, transformers==5.23.*, peft==0.21.*, torch==2.15.* (checked below).
Nothing here restates a loss: the numbers come from calling TRL's trainer methods on a minimal
stand-in for the trainer object (the attributes those methods read), so a change in TRL shows up
as a change in these files.

1. tests/fixtures/train/objectives.json: fixed per-token log-probs of 5 pairs (varied completion
   lengths) and reference sums, run through
     - DPOTrainer._compute_loss (TRL 1.16) with a stand-in model returning those log-probs and
       precomputed reference log-probs, for every DPOTrainer loss type and some combinations;
     - CPOTrainer.cpo_loss + its `losses.mean() + cpo_alpha * nll` (simpo: per-token means);
     - ORPOTrainer.odds_ratio_loss + its `nll − losses.mean()`.
2. tests/fixtures/train/objectives_per_row.json: per-row values (each pair as a batch of its own)
   on tests/fixtures/models/tiny-llama + its adapter and tests/fixtures/train/prefs.jsonl, with
   the same token ids as ours (make_train_fixtures.py's tokenization), from
     - DPOTrainer._compute_loss on the real model with TRL's fused LM head (reference: the model
       with the adapter disabled, passed as precomputed log-probs);
     - CPOTrainer.get_batch_loss_metrics (simpo with cpo_alpha = 0, cpo = sigmoid, cpo_alpha 1);
     - ORPOTrainer.get_batch_loss_metrics.
"""
import contextlib
import json
import pathlib
import sys
from collections import defaultdict
from types import SimpleNamespace

import peft
import torch
import transformers
import trl
from trl.experimental.cpo import CPOTrainer
from trl.experimental.orpo import ORPOTrainer
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.utils import add_fused_lm_head

PINS = {"trl": (trl, "1.16"), "transformers": (transformers, "5.23"), "peft": (peft, "0.21"),
        "torch": (torch, "2.15")}
for name, (mod, want) in PINS.items():
    if not mod.__version__.startswith(want):
        sys.exit(f"{name} {mod.__version__}: these fixtures are pinned to {want}.*")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_train_fixtures import MODEL, OUT, PREFS, completion_ids, split_implicit  # noqa: E402

ACCEL = SimpleNamespace(
    device=torch.device("cpu"),
    gather_for_metrics=lambda x: x,
    gather=lambda x: x,
    unwrap_model=lambda m: m,
    autocast=contextlib.nullcontext,
)

# (name, loss types, weights or None, extra DPOConfig values)
DPO_CASES = [
    ("sigmoid", ["sigmoid"], None, {}),
    ("hinge", ["hinge"], None, {"beta": 0.5}),
    ("ipo", ["ipo"], None, {}),
    ("exo_pair", ["exo_pair"], None, {"label_smoothing": 1e-3}),
    ("nca_pair", ["nca_pair"], None, {}),
    ("robust", ["robust"], None, {"label_smoothing": 0.1}),
    ("bco_pair", ["bco_pair"], None, {}),
    ("sppo_hard", ["sppo_hard"], None, {}),
    ("aot", ["aot"], None, {"label_smoothing": 0.1}),
    ("aot_unpaired", ["aot_unpaired"], None, {}),
    ("apo_zero", ["apo_zero"], None, {}),
    ("apo_down", ["apo_down"], None, {}),
    ("discopop", ["discopop"], None, {"discopop_tau": 0.05}),
    ("discopop_tau", ["discopop"], None, {"discopop_tau": 0.5, "beta": 0.05}),
    ("sft", ["sft"], None, {}),
    ("sigmoid_norm", ["sigmoid_norm"], None, {"beta": 2.0}),
    ("sigmoid+sft", ["sigmoid", "sft"], [1.0, 0.1], {}),
    ("mpo", ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], {}),
    # f-DPO: the scores f'(ratio) in the types built on their difference.
    ("forward_kl", ["sigmoid"], None, {"f_divergence_type": "forward_kl"}),
    ("js_divergence", ["sigmoid"], None, {"f_divergence_type": "js_divergence"}),
    ("alpha_divergence", ["sigmoid"], None, {"f_divergence_type": "alpha_divergence"}),
    ("alpha_divergence_coef", ["hinge"], None, {"f_divergence_type": "alpha_divergence",
                                                 "f_alpha_divergence_coef": 0.3, "beta": 0.5}),
    ("forward_kl_ipo", ["ipo"], None, {"f_divergence_type": "forward_kl"}),
    ("js_robust+sft", ["robust", "sft"], [1.0, 0.2], {"f_divergence_type": "js_divergence",
                                                       "label_smoothing": 0.1}),
    ("forward_kl_discopop", ["discopop"], None, {"f_divergence_type": "forward_kl"}),
    ("forward_kl_sigmoid_norm", ["sigmoid_norm"], None, {"f_divergence_type": "forward_kl", "beta": 2.0}),
    # LD-DPO: the tokens past the shorter completion weighted by ld_alpha, policy and reference
    # (per-row fixtures only: the unit fixture's inputs are sums).
    ("ld_alpha", ["sigmoid"], None, {"ld_alpha": 0.5}),
    ("ld_alpha_zero_ipo", ["ipo"], None, {"ld_alpha": 0.0}),
]
LD_ONLY = {"ld_alpha", "ld_alpha_zero_ipo"}
# WPO (use_weighting): each pair's loss times exp(mean(logp − log Σp²)) of chosen and rejected,
# which needs the model's distributions: per-row fixtures only.
DPO_CASES += [
    ("use_weighting", ["sigmoid"], None, {"use_weighting": True}),
    ("use_weighting_ipo+sft", ["ipo", "sft"], [1.0, 0.5], {"use_weighting": True}),
]
MODEL_ONLY = LD_ONLY | {"use_weighting", "use_weighting_ipo+sft"}
# DPOTrainer's per-token metrics, kept per row beside rewards/* and logps/*.
TOKEN_METRICS = ("entropy", "mean_token_accuracy", "logits/chosen", "logits/rejected")
CPO_CASES = [
    ("simpo", {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.5, "cpo_alpha": 0.0}),
    ("simpo_smoothed", {"loss_type": "simpo", "beta": 2.5, "simpo_gamma": 1.0, "cpo_alpha": 0.0,
                        "label_smoothing": 0.1}),
    ("cpo", {"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 1.0}),
    ("cpo_alpha", {"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 0.3, "label_smoothing": 0.05}),
    # AlphaPO: CPOConfig's `alpha` reward shape; "alphapo" is CPOConfig's name for simpo without NLL.
    ("alphapo", {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.5, "cpo_alpha": 0.0, "alpha": 0.25}),
    ("cpo_alphapo", {"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 1.0, "alpha": 0.05}),
]
ORPO_CASES = [("orpo", {"beta": 0.1}), ("orpo_beta", {"beta": 0.5})]


def dpo_self(types, weights, extra):
    cfg = {"beta": 0.1, "label_smoothing": 0.0, "discopop_tau": 0.05, **extra}
    return SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=ACCEL, aux_loss_enabled=False,
        ld_alpha=cfg.get("ld_alpha"), precompute_ref_logps=True,
        f_divergence_type=cfg.get("f_divergence_type", "reverse_kl"),
        f_alpha_divergence_coef=cfg.get("f_alpha_divergence_coef", 0.5),
        loss_types=types, loss_weights=weights or [1.0] * len(types), beta=cfg["beta"],
        label_smoothing=cfg["label_smoothing"],
        args=SimpleNamespace(discopop_tau=cfg["discopop_tau"], gradient_checkpointing_kwargs=None),
        use_weighting=cfg.get("use_weighting", False), _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
    ), cfg


def our_config(types, weights, cfg):
    out = {"loss_type": types if len(types) > 1 else types[0], "beta": cfg["beta"]}
    if weights:
        out["loss_weights"] = weights
    for key in ("label_smoothing",):
        if cfg.get(key):
            out[key] = cfg[key]
    if "discopop" in types:
        out["discopop_tau"] = cfg["discopop_tau"]
    for key in ("f_divergence_type", "f_alpha_divergence_coef", "ld_alpha", "use_weighting"):
        if key in cfg:
            out[key] = cfg[key]
    return out


class StandInModel:
    """Returns fixed per-token log-probs where the labels are not -100 (TRL's fused head)."""

    def __init__(self, token_logps):
        self.token_logps = token_logps

    def __call__(self, input_ids, attention_mask, labels, **_):
        mask = (labels[:, 1:] != -100).float()
        lp = self.token_logps * mask
        zeros = torch.zeros_like(lp)
        return SimpleNamespace(log_probs=lp, entropy=zeros, mean_logits=zeros,
                               is_top1=torch.zeros_like(lp, dtype=torch.bool))


def fixed_inputs():
    g = torch.Generator().manual_seed(0)
    n, prompt = 5, 3
    lens_c = [2, 5, 1, 7, 3]
    lens_r = [4, 2, 6, 3, 3]
    T = prompt + max(lens_c + lens_r)
    mask = torch.zeros(2 * n, T, dtype=torch.long)
    for i, L in enumerate(lens_c + lens_r):
        mask[i, prompt:prompt + L] = 1
    # Per-token log-probs in (-3, -0.05): the sums are varied and the orderings differ between
    # pairs (which aot's sorting sees).
    token = -(torch.rand(2 * n, T - 1, generator=g) * 2.95 + 0.05)
    token = token * mask[:, 1:].float()
    sums = token.sum(1)
    ref = sums + torch.randn(2 * n, generator=g) * 1.5
    return n, T, mask, token, sums, ref, lens_c, lens_r


def unit_fixtures():
    n, T, mask, token, sums, ref, lens_c, lens_r = fixed_inputs()
    inputs = {
        "input_ids": torch.ones(2 * n, T, dtype=torch.long),
        "attention_mask": torch.ones(2 * n, T, dtype=torch.long),
        "completion_mask": mask,
        "ref_chosen_logps": ref[:n],
        "ref_rejected_logps": ref[n:],
    }
    chosen_nll = float(-token[:n].sum() / mask[:n].sum())
    out = {
        "inputs": {
            "chosen_logps": sums[:n].tolist(), "rejected_logps": sums[n:].tolist(),
            "chosen_tokens": lens_c, "rejected_tokens": lens_r,
            "ref_chosen_logps": ref[:n].tolist(), "ref_rejected_logps": ref[n:].tolist(),
            "chosen_nll": chosen_nll,
        },
        "cases": {},
    }
    model = StandInModel(token)
    for name, types, weights, extra in DPO_CASES:
        if name in MODEL_ONLY:
            continue
        fake, cfg = dpo_self(types, weights, extra)
        loss = DPOTrainer._compute_loss(fake, model, dict(inputs), False)
        metrics = {k: v[0] for k, v in fake._metrics["train"].items()
                   if k.startswith(("rewards/", "logps/"))}
        metrics["loss"] = float(loss)
        out["cases"][name] = {"config": our_config(types, weights, cfg), "metrics": metrics}

    avg_c = sums[:n] / torch.tensor(lens_c, dtype=torch.float)
    avg_r = sums[n:] / torch.tensor(lens_r, dtype=torch.float)
    for name, cfg in CPO_CASES:
        fake = SimpleNamespace(alpha=0.0, accelerator=ACCEL, label_smoothing=0.0, simpo_gamma=0.5)
        fake.__dict__.update(cfg)
        simpo = cfg["loss_type"] == "simpo"
        pc, pr = (avg_c, avg_r) if simpo else (sums[:n], sums[n:])
        losses, cr, rr = CPOTrainer.cpo_loss(fake, pc, pr)
        # CPOTrainer.get_batch_loss_metrics: loss = losses.mean() + self.cpo_alpha * policy_nll_loss
        loss = losses.mean() + cfg["cpo_alpha"] * chosen_nll
        ours = {"loss_type": "simpo" if simpo else "cpo", "beta": cfg["beta"]}
        if simpo:
            ours["simpo_gamma"] = cfg["simpo_gamma"]
        else:
            ours["cpo_alpha"] = cfg["cpo_alpha"]
        if cfg.get("label_smoothing"):
            ours["label_smoothing"] = cfg["label_smoothing"]
        if cfg.get("alpha"):
            ours["alpha"] = cfg["alpha"]
            if simpo:
                ours["loss_type"] = "alphapo"
        metrics = {
            "loss": float(loss), "rewards/chosen": float(cr.mean()), "rewards/rejected": float(rr.mean()),
            "rewards/accuracies": float((cr > rr).float().mean()), "rewards/margins": float((cr - rr).mean()),
            "logps/chosen": float(pc.mean()), "logps/rejected": float(pr.mean()),
        }
        if not simpo:
            metrics["nll_loss"] = chosen_nll
        out["cases"][name] = {"config": ours, "metrics": metrics}

    # ORPO's NLL runs over prompt and completion: a given value here (ORPOTrainer computes it
    # from the logits; the per-row fixture checks that part on the model).
    orpo_nll = 1.75
    out["inputs"]["orpo_nll"] = orpo_nll
    for name, cfg in ORPO_CASES:
        fake = SimpleNamespace(accelerator=ACCEL, **cfg)
        losses, cr, rr, ratio, log_odds = ORPOTrainer.odds_ratio_loss(fake, avg_c, avg_r)
        loss = orpo_nll - losses.mean()  # ORPOTrainer.get_batch_loss_metrics
        out["cases"][name] = {"config": {"orpo": True, **cfg}, "metrics": {
            "loss": float(loss), "rewards/chosen": float(cr.mean()), "rewards/rejected": float(rr.mean()),
            "rewards/accuracies": float((cr > rr).float().mean()), "rewards/margins": float((cr - rr).mean()),
            "logps/chosen": float(avg_c.mean()), "logps/rejected": float(avg_r.mean()),
            "log_odds_ratio": float(ratio), "log_odds_chosen": float(log_odds), "nll_loss": orpo_nll,
        }}
    (OUT / "objectives.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def per_row_fixtures():
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL)
    base = AutoModelForCausalLM.from_pretrained(MODEL, attn_implementation="eager", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, MODEL / "adapter")
    model.eval()
    rows = [split_implicit(r) for r in PREFS]
    pairs = [(completion_ids(tok, p, c), completion_ids(tok, p, r)) for p, c, r in rows]

    def seq(p, c):
        ids = torch.tensor([p + c])
        labels = torch.tensor([[-100] * len(p) + c])
        return ids, torch.ones_like(ids), labels

    out = {}
    # CPOTrainer and ORPOTrainer on their own batch layout.
    for name, cfg, cls in [("simpo", {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.5, "cpo_alpha": 0.0}, CPOTrainer),
                           ("cpo", {"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 1.0}, CPOTrainer),
                           ("orpo", {"beta": 0.1}, ORPOTrainer)]:
        fake = SimpleNamespace(alpha=0.0, accelerator=ACCEL, label_smoothing=0.0, simpo_gamma=0.5,
                               is_encoder_decoder=False, aux_loss_enabled=False,
                               pad_token_id=tok.pad_token_id, padding_value=tok.pad_token_id)
        fake.__dict__.update(cfg)
        fake.concatenated_inputs = cls.concatenated_inputs
        fake.get_batch_logps = cls.get_batch_logps
        fake.concatenated_forward = lambda m, b, cls=cls, fake=fake: cls.concatenated_forward(fake, m, b)
        if cls is CPOTrainer:
            fake.cpo_loss = lambda c, r, fake=fake: CPOTrainer.cpo_loss(fake, c, r)
        else:
            fake.odds_ratio_loss = lambda c, r, fake=fake: ORPOTrainer.odds_ratio_loss(fake, c, r)
        per_row = []
        for (pc, cc), (pr, rc) in pairs:
            ci, ca, cl = seq(pc, cc)
            ri, ra, rl = seq(pr, rc)
            batch = {"chosen_input_ids": ci, "chosen_attention_mask": ca, "chosen_labels": cl,
                     "rejected_input_ids": ri, "rejected_attention_mask": ra, "rejected_labels": rl}
            with torch.no_grad():
                loss, metrics = cls.get_batch_loss_metrics(fake, model, batch)
            per_row.append({"loss": float(loss), **{k: float(v) for k, v in metrics.items()
                                                    if not k.startswith("logits/")}})
        ours = {"beta": cfg["beta"]}
        if cls is CPOTrainer:
            ours["loss_type"] = "simpo" if cfg["loss_type"] == "simpo" else "cpo"
            if ours["loss_type"] == "simpo":
                ours["simpo_gamma"] = cfg["simpo_gamma"]
            else:
                ours["cpo_alpha"] = cfg["cpo_alpha"]
        else:
            ours["loss_type"] = "orpo"
        out[name] = {"config": ours, "per_row": per_row}

    # DPOTrainer with its fused LM head on the same model.
    add_fused_lm_head(model.get_base_model(),
                      outputs=("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs"))
    for name, types, weights, extra in DPO_CASES:
        if name in ("mpo",):
            continue
        per_row = []
        for (pc, cc), (pr, rc) in pairs:
            T = max(len(pc) + len(cc), len(pr) + len(rc))
            ids = torch.full((2, T), tok.pad_token_id)
            attn = torch.zeros(2, T, dtype=torch.long)
            cm = torch.zeros(2, T, dtype=torch.long)
            for i, (p, c) in enumerate([(pc, cc), (pr, rc)]):
                ids[i, :len(p) + len(c)] = torch.tensor(p + c)
                attn[i, :len(p) + len(c)] = 1
                cm[i, len(p):len(p) + len(c)] = 1
            labels = ids.masked_fill(cm == 0, -100)
            fake, cfg = dpo_self(types, weights, extra)
            fake.model = SimpleNamespace(training=False)
            inputs = {"input_ids": ids, "attention_mask": attn, "completion_mask": cm}
            if name in LD_ONLY:
                # TRL's own reference pass (the adapter disabled), with its LD weighting.
                fake.ref_model, fake.model = None, model
                ref_c, ref_r = DPOTrainer.compute_ref_log_probs(fake, model, inputs)
            else:
                with torch.no_grad(), model.disable_adapter():
                    ref = model(input_ids=ids, attention_mask=attn, labels=labels, fused_lm_head=True).log_probs
                ref = ref[:, -(T - 1):].sum(1)
                ref_c, ref_r = ref[:1], ref[1:]
            inputs.update({"ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r})
            with torch.no_grad():
                loss = DPOTrainer._compute_loss(fake, model, inputs, False)
            m = {k: v[0] for k, v in fake._metrics["eval"].items()
                 if k.startswith(("rewards/", "logps/")) or k in TOKEN_METRICS}
            per_row.append({"loss": float(loss), **m})
        out[name] = {"config": our_config(types, weights, cfg), "per_row": per_row}
    (OUT / "objectives_per_row.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def main():
    unit = unit_fixtures()
    rows = per_row_fixtures()
    print({k: round(v["metrics"]["loss"], 6) for k, v in unit["cases"].items()})
    print({k: [round(r["loss"], 5) for r in v["per_row"]] for k, v in rows.items()})


if __name__ == "__main__":
    main()
