"""Index: `mel index`, start or join Ray, pick the model folder and run the indexing job (`workers.index_job`).

Reads: the KB's entity shards and a model folder (the one `mel serve` serves by default). Writes: a new
Milvus collection named after the KB build and the model (`workers.collections`), its feature cache
(`features/<collection>/`), `index/<collection>/progress.json`, and the alias swap.
"""
