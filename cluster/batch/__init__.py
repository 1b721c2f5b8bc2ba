"""Batch linking (`mel link-batch`): a file, folder, glob or s3:// prefix of mentions -> linked Parquet parts.

Reads mentions in any format `kb_builder` reads (JSONL, Parquet, CSV, MIMIC, MELBench) with the KB's column
mapping and validation; links them on a Ray Data actor pool with serving's own plain classes
(cluster.serve.pipeline: MentionEncoder, Retriever, Reranker, assemble), so answers equal `/link`'s; writes
`<output>/parts/part-NNNNN.parquet` (one row per mention: top-k ids, names, scores, NIL, timings),
`<output>/rejects/*.jsonl` (rows failing validation or with unreadable images, with the reason) and
`<output>/summary.json`. A part is written once, atomically, so a re-run after a crash skips finished parts.
"""
