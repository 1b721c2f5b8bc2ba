"""Serve: link mentions over HTTP on Ray Serve (encoder -> Milvus top-K -> exact MMoE rerank -> NIL).

Reads: the served model (`serve.checkpoint`, else `runs/<run>/best/`, else `models/init/`) with its
`calibration.json`, the Milvus collection behind the alias and its feature cache. Writes nothing.
`pipeline` holds the plain classes, `app` the Serve deployments, `http` the FastAPI surface, `schemas`
the request and response models, `guard` the index/model check, `client` the `mel link` client.
"""
