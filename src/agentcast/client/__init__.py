"""agentcast.client."""
