"""Bridges from agent frameworks onto agentcast topics (optional extras)."""
