"""The cluster side of the pipeline, one folder per stage, in the order data flows:

    index/ -> train/ -> evaluate/ -> serve/      (dme/ enhances mentions for all three; paper/ runs the table)

Shared by every stage: `config` (ray_config.yaml -> typed sections), `runtime` (start or join Ray),
`artifacts` (where each stage's outputs live), `inputs` (KB rows -> model inputs), `cli` (`mel`),
`quickstart` (every stage on embedded defaults) and `deploy` (Ray/KubeRay manifests from the config).
An import-linter layers contract in pyproject.toml keeps the stages one-way.
"""
