"""Train: fine-tune MMoE on Ray Train (TorchTrainer, DDP) and keep the best model by dev MRR.

Reads: the KB's mention and entity shards (`kb/<name>/`), the DME cache when present, the untrained model
(`models/init/`). Writes: `runs/<run>/checkpoints/`, `runs/<run>/best/` (an MMoE folder) and
`runs/<run>/reports/` (history, plots). Dev evaluation during training uses `cluster.evaluate.dev` (system protocol by default, shared by the workers).
"""
