"""What the driver side and the workers share: the types that cross between processes.

Owns: engine requests and their streamed chunks (``generation``), segments and where they ran
(``segment``), a fork's policy and the width advised for it (``fork``), engines' endpoints, speed and load (``engine``), KV hold and pull values (``kv``),
and the request stream's frames (``wire``). Imports nothing else of Loom's: both sides import it.
"""
