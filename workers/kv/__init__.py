"""Prefix KV moved engine to engine: a vLLM KV connector (connector.py) over a torch.distributed
pair-group transport (transport.py), speaking the typed messages of messages.py."""
