"""agentcast.demo."""
