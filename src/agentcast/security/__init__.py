"""Security building blocks of a node: connection tokens (JWT) with topic capabilities,
tenant isolation, API keys for the HTTP API, the browser Origin allowlist, rate and
connection limits, and TLS contexts.

:class:`agentcast.security.guard.Security` is the one object a node builds from its
:class:`agentcast.security.config.SecurityConfig`; transports call it at the WebSocket
upgrade, at ``hello``, per command and per HTTP request. docs/security.md has the threat
model, every check and where it runs.
"""
