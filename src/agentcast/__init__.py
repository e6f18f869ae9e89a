"""agentcast: a self-hosted realtime backbone for multi-agent AI systems."""

__version__ = "0.1.0"
