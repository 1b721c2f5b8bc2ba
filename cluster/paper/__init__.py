"""Paper: `mel bench-paper`, the paper's benchmark table on a MIMIC-format benchmark folder.

Reads: a benchmark folder (WikiMEL, RichpediaMEL, WikiDiverse), built into a KB. Writes: `runs/<preset>/`
(the trained models of both gates and `paper_table.md` / `.json`). Uses train and evaluate as they are.
"""
