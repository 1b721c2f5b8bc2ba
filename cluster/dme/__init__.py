"""DME: description-aware mention enhancement (reference section 3, GitHub issue 8).

For each mention, gather candidate entity descriptions (name/alias matches plus the ANN top-N), pick the one
that best fits the mention in its sentence (an LLM, an offline embedding similarity, or nothing), and cache
the pick per KB version so training, evaluation and serving read the same `desc`.

Modules: `prompt` (the LLM prompt and strict answer parsing), `candidates`, `selectors` (the interface and
counters), `llm_selector`, `embedding_selector`, `cache` (the Parquet file), `worker` (one batch: candidates
and selection), `job` (`mel dme` on Ray), `enhance` (`dme_selections` for training/eval, `MentionTexts` for
per-request DME in serving and link-batch, through the same worker).
"""
