"""agentcast.transport."""
