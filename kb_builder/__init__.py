"""KB files -> validated canonical Parquet shards + manifest (docs/contracts.md, GitHub issue 4).

storage (local + s3://), schema, readers (jsonl, parquet, csv, MIMIC, MELBench), canonical, validate,
shards (write + read API), diff, build, sample_kb (synthetic), stats, check (leakage).
"""
