"""agentcast.dashboard: the live web dashboard served by the node's HTTP API."""

from agentcast.dashboard.routes import add_dashboard_routes, dashboard_url
from agentcast.dashboard.snapshot import DASHBOARD_CLIENT, build_stats
from agentcast.dashboard.traffic import TopicTraffic

__all__ = [
    "DASHBOARD_CLIENT",
    "TopicTraffic",
    "add_dashboard_routes",
    "build_stats",
    "dashboard_url",
]
