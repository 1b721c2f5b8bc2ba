"""Confidence calibration on dev: a probability per candidate, and NIL decided on it.

Raw MMoE scores are unbounded dot products (around 40-55 on the sample KB), so a user cannot read them as
"how sure". Temperature scaling over the K best candidates plus one NIL option turns them into
confidence_j = softmax([s_1 / T, ..., s_K / T, b])_j, with the temperature T and the NIL logit b fitted on dev by
minimum cross-entropy (label = the gold's position among the K, or NIL for mentions whose answer is NIL).
Without NIL mentions in dev there is nothing to fit b on, so the NIL option is left out (b = None). Dev mentions
whose gold falls outside the K are left out of the fit: their right answer is not among the options.

The NIL threshold is then fitted on the best candidate's confidence, as before on scores: with NIL mentions the
value that maximises link-vs-NIL accuracy, without any the 5th percentile of the gold confidences. `mel eval`
writes everything beside the model (`cluster.artifacts.write_calibration`), where serving reads it.
"""

from __future__ import annotations

import math

import torch

GOLD_PERCENTILE = 0.05
ECE_BINS = 10
FIT_STEPS = 200


def confidences(
    scores: torch.Tensor, temperature: float = 1.0, nil_logit: float | None = None
) -> torch.Tensor:
    """[M,K] scores (best first or not) -> [M,K] confidences; with a NIL logit they sum to 1 - P(NIL)."""
    logits = scores.float() / temperature
    if nil_logit is None:
        return logits.softmax(-1)
    nil = torch.full((*logits.shape[:-1], 1), float(nil_logit))
    return torch.cat([logits, nil], dim=-1).softmax(-1)[..., :-1]


def serving_confidences(ranked_scores: list[float], calibration: dict) -> list[float]:
    """Confidence of every reranked candidate (best first) under `calibration.json`; plain softmax without one.

    The normaliser covers the best `candidates_k` (the K of the fit) plus the NIL option, so a candidate's
    confidence does not depend on how many candidates the request asked for.
    """
    if not ranked_scores:
        return []
    t = float(calibration.get("temperature") or 1.0)
    k = int(calibration.get("candidates_k") or len(ranked_scores))
    logits = torch.tensor(ranked_scores, dtype=torch.float64) / t
    pool = logits[:k]
    nil = calibration.get("nil_logit")
    if nil is not None:
        pool = torch.cat([pool, torch.tensor([float(nil)], dtype=torch.float64)])
    return (logits - torch.logsumexp(pool, 0)).exp().clamp(max=1.0).tolist()


def fit_temperature(scores: torch.Tensor, labels: torch.Tensor, with_nil: bool) -> tuple[float, float | None]:
    """(T, b) minimising the cross-entropy of labels [M] (K = NIL) under softmax([scores / T, b])."""
    scores = scores.float()
    log_t = torch.zeros((), requires_grad=True)
    top = scores.max(-1).values
    nil = torch.tensor(float(top.median() if top.numel() else 0.0), requires_grad=True)
    params = [log_t, nil] if with_nil else [log_t]
    opt = torch.optim.LBFGS(params, lr=0.1, max_iter=FIT_STEPS, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        logits = scores / log_t.exp()
        if with_nil:
            logits = torch.cat([logits, nil.expand(scores.shape[0], 1)], dim=-1)
        value = torch.nn.functional.cross_entropy(logits, labels)
        value.backward()
        return value

    if scores.shape[0]:
        opt.step(loss)
    return float(log_t.detach().exp()), (float(nil.detach()) if with_nil else None)


def reliability(conf: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """(ECE, per-bin {lo, hi, confidence, accuracy, count}) of top-1 confidences [M] against correctness [M]."""
    conf, correct = conf.float(), correct.float()
    edges = torch.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for i in range(bins):
        lo, hi = float(edges[i]), float(edges[i + 1])
        inside = (conf > lo) & (conf <= hi) if i else (conf >= lo) & (conf <= hi)
        n = int(inside.sum())
        if n:
            c, a = float(conf[inside].mean()), float(correct[inside].mean())
            ece += n / conf.numel() * abs(c - a)
            rows.append({"lo": lo, "hi": hi, "confidence": c, "accuracy": a, "count": n})
    return ece, rows


def fit_nil_threshold(linked_top: torch.Tensor, linked_gold: torch.Tensor, nil_top: torch.Tensor) -> dict:
    """{"nil_threshold", "method", "accuracy"} from top values of linked and NIL mentions and gold values."""
    linked_top, nil_top = linked_top.float(), nil_top.float()
    gold = linked_gold[~torch.isnan(linked_gold)].float()
    if nil_top.numel() == 0:
        if gold.numel() == 0:
            return {"nil_threshold": None, "method": "none", "accuracy": None}
        value = float(torch.quantile(gold, GOLD_PERCENTILE))
        return {"nil_threshold": value, "method": f"p{int(GOLD_PERCENTILE * 100)} of gold", "accuracy": None}
    candidates = torch.cat([linked_top, nil_top]).unique()  # sorted ascending
    total = linked_top.numel() + nil_top.numel()
    best_t, best_acc = float(candidates[0]), -1.0
    for t in candidates.tolist():
        acc = (int((linked_top >= t).sum()) + int((nil_top < t).sum())) / total
        if acc > best_acc:
            best_t, best_acc = t, acc
    return {"nil_threshold": best_t, "method": "max link-vs-NIL accuracy on dev", "accuracy": best_acc}


def calibrate_confidence(scores: torch.Tensor, gold_position: torch.Tensor, is_nil: torch.Tensor) -> dict:
    """Everything `calibration.json` holds, from dev top-K scores [M,K] (best first), the gold's position among
    them [M] (-1: not among them or NIL) and the NIL flags [M]."""
    m, k = scores.shape
    fit_rows = is_nil | (gold_position >= 0)
    labels = torch.where(is_nil, torch.full_like(gold_position, k), gold_position)[fit_rows]
    with_nil = bool(is_nil.any())
    temperature, nil_logit = fit_temperature(scores[fit_rows], labels, with_nil)
    before = confidences(scores)  # plain softmax over the raw scores
    after = confidences(scores, temperature, nil_logit)
    correct = gold_position == 0  # the best candidate is the gold
    ece_before, bins_before = reliability(before[:, 0] if k else torch.zeros(m), correct)
    ece_after, bins_after = reliability(after[:, 0] if k else torch.zeros(m), correct)
    top = after[:, 0] if k else torch.zeros(m)
    gold_conf = torch.full((m,), math.nan)
    has_gold = gold_position >= 0
    gold_conf[has_gold] = after[has_gold, gold_position[has_gold]]
    linked = ~is_nil
    threshold = fit_nil_threshold(top[linked], gold_conf[linked], top[is_nil])
    out = {
        **threshold,
        "nil_threshold_unit": "confidence",
        "temperature": temperature,
        "nil_logit": nil_logit,
        "candidates_k": k,
        "ece_before": ece_before,
        "ece_after": ece_after,
        "reliability_before": bins_before,
        "reliability_after": bins_after,
        "dev_mentions": m,
    }
    if threshold["nil_threshold"] is not None:
        predicted_nil = top < threshold["nil_threshold"]
        hits = int((predicted_nil & is_nil).sum())
        out["nil_precision"] = hits / int(predicted_nil.sum()) if predicted_nil.any() else None
        out["nil_recall"] = hits / int(is_nil.sum()) if is_nil.any() else None
    return out
