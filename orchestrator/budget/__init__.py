"""The compute budget: where a job's tokens are charged and its forks admitted.

Owns: a job's budget and the policy's answers (``policy``), a job's account (``account``), the
calls a driver sends to the coordinator (``calls``), the cluster's ledger (``ledger``), a
thread's token lease (``lease``), the budget operations' protocol (``ops``) and its two
implementations, in process (``local``) and replicated to the coordinator actor (``replica``,
``coordinator``). May import ``protocol`` and ``telemetry``.
"""
