"""agentcast.hub."""
