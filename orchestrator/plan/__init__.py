"""Plan formats and the thread DAG: how a model announces a fork and how Loom answers it.

Owns: the format profiles (``formats``: fork trigger, outline parsing, thread header, join
text, closing rules, nesting), the published models' profiles (``published``, APR's child
prompts in ``apr``), which format a model speaks (``detect``), an incremental parser
(``parser``) and the DAG of a job's segments, threads and joins (``dag``). May import
``protocol``.
"""
