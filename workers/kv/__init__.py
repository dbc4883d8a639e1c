"""Prefix KV moved engine to engine: Loom's vLLM KV connector (``connector``), its scheduler
half (``scheduler_side``: which tokens a request loads from a peer) and worker half
(``worker_side``: serving held blocks, pulling them), over a torch.distributed transport
(``transport``, on a pair group of Loom's own: ``pair_group``), speaking the typed messages of
``messages``.
"""
