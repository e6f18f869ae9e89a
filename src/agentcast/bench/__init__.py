"""agentcast.bench."""
