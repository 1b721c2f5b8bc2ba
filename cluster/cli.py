"""`mel`: the command line. Each subcommand is a few lines calling a library function.

Heavy imports (torch, Ray, Milvus) happen inside the subcommands so that `mel --help` starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _config(args: argparse.Namespace):
    from cluster.config import load_config

    return load_config(args.config, overrides=args.set, overlays=getattr(args, "overlay_files", None))


def _kb_build(args):
    cfg = _config(args)
    from kb_builder.build import build_kb

    roots = cfg.encoder.allowed_image_roots  # local images: the rule indexing applies; prints its summary
    build_kb(cfg.kb, cfg.storage, allow_mass_delete=args.allow_mass_delete, image_roots=roots)


def _kb_stats(args):
    cfg = _config(args)
    from kb_builder.stats import kb_stats

    print(kb_stats(cfg.kb, cfg.storage))


def _kb_check(args):
    cfg = _config(args)
    from kb_builder.check import check_kb

    report = check_kb(cfg.kb, cfg.storage)
    print(report.summary())
    if args.strict and report.leaks:
        print(f"--strict: {report.leaks} leak(s) found", file=sys.stderr)
        return 1
    return 0


def _index(args):
    cfg = _config(args)
    from cluster.index.run import run_index_job

    print(run_index_job(cfg, mode=args.mode, checkpoint=args.checkpoint).summary())


def _train(args):
    cfg = _config(args)
    from cluster.train.run import run_training

    if args.train_fraction is not None:
        cfg.train.train_fraction = args.train_fraction
    print(run_training(cfg, resume=args.resume).summary())


def _eval(args):
    cfg = _config(args)
    from cluster.evaluate.run import run_eval

    print(run_eval(cfg, checkpoint=args.checkpoint, split=args.split).summary())


def _dme(args):
    cfg = _config(args)
    from cluster.dme.job import run_dme

    print(run_dme(cfg).summary())


def _serve(args):
    cfg = _config(args)
    from cluster.serve.app import print_serve_config, run_serve

    if args.print_config:
        print(print_serve_config(cfg))
        return 0
    run_serve(cfg)
    return 0


def _link(args):
    cfg = _config(args)
    from cluster.serve.client import link

    url = args.url or f"http://{cfg.serve.host}:{cfg.serve.port}"
    print(link(url, args.mention, context=args.context, image=args.image, top_k=args.top_k))


def _link_batch(args):
    cfg = _config(args)
    from cluster.batch.run import run_link_batch

    print(run_link_batch(cfg, args.inputs, args.output).summary())


def _quickstart(args):
    cfg = _config(args)
    from cluster.quickstart import run_quickstart

    run_quickstart(cfg)


def _bench_paper(args):
    cfg = _config(args)
    from cluster.paper.run import run_bench_paper

    print(
        run_bench_paper(
            cfg,
            preset=args.preset,
            overrides=args.set,
            config_path=args.config,
            overlays=args.overlay_files,
            train_fraction=args.train_fraction,
            strict=args.strict,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mel", description="Multimodal entity linking at KB scale (MMoE on Ray, Milvus, S3)."
    )
    parser.add_argument(
        "--config", default=None, help="config file (default: the repository's ray_config.yaml)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config key (repeatable)",
    )
    parser.add_argument(
        "--overlay",
        dest="overlay_files",
        action="append",
        default=[],
        help="overlay YAML, e.g. configs/wikimel.yaml",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray's own log lines (they always go to Ray's log files)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    kb = sub.add_parser("kb", help="build, describe and check the knowledge base")
    kb_sub = kb.add_subparsers(dest="kb_command", required=True)
    build = kb_sub.add_parser("build", help="ingest KB and mention files into sharded Parquet + manifest")
    build.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="publish even if over kb.max_delete_fraction is deleted",
    )
    build.set_defaults(func=_kb_build)
    kb_sub.add_parser("stats", help="counts, field coverage, images per entity, name ambiguity").set_defaults(
        func=_kb_stats
    )
    check = kb_sub.add_parser("check", help="leakage and sanity checks before training")
    check.add_argument("--strict", action="store_true", help="exit 1 when a leak is found")
    check.set_defaults(func=_kb_check)

    index = sub.add_parser("index", help="encode the KB on Ray actors into Milvus")
    index.add_argument("--mode", choices=["full", "incremental"], default="full")
    index.add_argument(
        "--checkpoint",
        default="",
        help="model folder (default: the one `mel serve` uses: serve.checkpoint, else best trained, else untrained)",
    )
    index.set_defaults(func=_index)

    train = sub.add_parser("train", help="train MMoE with Ray Train")
    train.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    train.add_argument("--train-fraction", type=float, default=None, help="low-resource run: 0.1 or 0.2")
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="Hits@k and MRR: exhaustive and ANN+rerank protocols, DME on/off")
    ev.add_argument("--checkpoint", default="", help="model folder (default: the run's best)")
    ev.add_argument("--split", default="test", choices=["train", "dev", "test"])
    ev.set_defaults(func=_eval)

    sub.add_parser("dme", help="description-aware mention enhancement in bulk").set_defaults(func=_dme)

    serve = sub.add_parser("serve", help="serve linking over HTTP with Ray Serve (foreground; Ctrl-C stops)")
    serve.add_argument("--print-config", action="store_true", help="print the Serve config YAML and exit")
    serve.set_defaults(func=_serve)

    link = sub.add_parser("link", help="link one mention through a running server")
    link.add_argument("mention")
    link.add_argument("--context", default="")
    link.add_argument("--image", default=None, help="image file path or URI")
    link.add_argument("--top-k", type=int, default=5)
    link.add_argument("--url", default=None, help="server URL (default: serve.host:serve.port)")
    link.set_defaults(func=_link)

    batch = sub.add_parser("link-batch", help="link a file/folder/glob/s3:// of mentions offline on Ray Data")
    batch.add_argument("--input", dest="inputs", action="append", required=True, help="repeatable")
    batch.add_argument("--output", required=True, help="folder or s3:// prefix (re-runs skip finished parts)")
    batch.set_defaults(func=_link_batch)

    sub.add_parser("quickstart", help="sample KB -> index -> train -> eval -> serve -> link").set_defaults(
        func=_quickstart
    )

    bench = sub.add_parser("bench-paper", help="reproduce the paper's table on a benchmark preset")
    bench.add_argument(
        "--preset", dest="preset", default="wikimel", choices=["wikimel", "richpediamel", "wikidiverse"]
    )
    bench.add_argument("--train-fraction", type=float, default=None, help="low-resource run: 0.1 or 0.2")
    bench.add_argument("--strict", action="store_true", help="stop when `mel kb check` finds a leak")
    bench.set_defaults(func=_bench_paper)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config:
        args.config = str(Path(args.config))
    if args.verbose:
        os.environ["MEL_VERBOSE"] = "1"  # cluster.runtime: Ray's own log lines reach the console too
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a clean message, not a stack trace, for expected errors
        from cluster.config import ConfigError

        if isinstance(exc, ConfigError | FileNotFoundError | ValueError):
            print(f"mel: error: {exc}", file=sys.stderr)
            return 2
        raise
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
