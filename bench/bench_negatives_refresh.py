"""Does re-mining hard negatives as the model learns help? `mel train` on the sample KB with index-mined hard
negatives, mined once (`train.negatives_refresh_epochs=0`) against re-mined every epoch (=1), same seed;
prints dev MRR per epoch and the test metrics of each run's best model (exhaustive protocol).

    python3 bench/bench_negatives_refresh.py [--epochs 4 --hard-negatives 4 --entities 120 --mentions 400]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run(refresh_epochs: int, args) -> tuple[list[float], dict]:
    from cluster.config import load_config
    from cluster.evaluate.run import run_eval
    from cluster.train.run import run_training

    root = Path(tempfile.mkdtemp(prefix=f"bench-refresh-{refresh_epochs}-"))
    cfg = load_config(
        overrides=[
            f"storage.root={root / 'data'}",
            f"storage.cache_dir={root / 'cache'}",
            f"kb.sample_entities={args.entities}",
            f"kb.sample_mentions={args.mentions}",
            f"train.epochs={args.epochs}",
            f"train.hard_negatives={args.hard_negatives}",
            f"train.negatives_refresh_epochs={refresh_epochs}",
            "train.early_stop_patience=100",
        ]
    )
    result = run_training(cfg)
    test = run_eval(cfg, split="test").tables["exhaustive"]
    return [d["mrr"] for d in result.history.dev], test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--hard-negatives", type=int, default=4)
    parser.add_argument("--entities", type=int, default=120)
    parser.add_argument("--mentions", type=int, default=400)
    args = parser.parse_args()
    once = run(0, args)
    every = run(1, args)
    print(f"\nbench_negatives_refresh: {args.hard_negatives} hard negatives, {args.epochs} epochs, sample KB")
    for name, (dev, test) in (("mined once", once), ("re-mined every epoch", every)):
        curve = " ".join(f"{m:.3f}" for m in dev)
        print(f"{name:>22}: dev MRR by epoch {curve}; test H@1 {test['hits@1']:.3f} MRR {test['mrr']:.3f}")
    print(f"test MRR re-mined / once: {every[1]['mrr'] / max(once[1]['mrr'], 1e-9):.3f}")


if __name__ == "__main__":
    main()
