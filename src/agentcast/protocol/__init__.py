"""agentcast.protocol."""
