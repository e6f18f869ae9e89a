"""Brokers: the existing distributed engines that link agentcast nodes."""
