"""Evaluate: Hits@k, MRR and mean rank under two protocols, and the NIL threshold calibrated on dev.

Reads: a model folder, the KB's shards, the DME cache. Writes: an evaluation collection named after the
model (`workers.collections.eval_collection`) with its feature cache, `<model>/calibration.json`, and
`runs/<run>/reports/` (metrics JSON and Markdown tables). Protocols: (a) exhaustive, every mention against
every entity (the paper's); (b) system, ANN top-K + exact rerank (what serving does).
"""
