"""Plan formats and the thread DAG: how a model announces a fork and how Loom answers it.

Owns: the format profiles (``formats``: fork trigger, outline parsing, thread header, join
text, closing rules, nesting), an incremental parser (``parser``) and the DAG of a job's
segments, threads and joins (``dag``). May import ``protocol``.
"""
