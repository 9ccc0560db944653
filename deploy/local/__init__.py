"""The local server stack on 127.0.0.1: ``python -m deploy.local.stack up|down|status|env|exec``."""
