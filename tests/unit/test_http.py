"""Which listeners the HTTP endpoints need (the serving is tested in tests/integration/test_ops_http.py)."""
from supervisor.config import Endpoint
from supervisor.http import plan


def test_plan_shares_one_listener_and_disables_none():
    same = Endpoint("169.254.20.10", 8080)
    assert plan(same, Endpoint("169.254.20.10", 8080)) == [(same, ("/health", "/metrics"))]
    assert plan(None, same) == [(same, ("/metrics",))]
    assert plan(None, None) == []
    other = Endpoint("169.254.20.10", 9253)
    assert plan(same, other) == [(same, ("/health",)), (other, ("/metrics",))]
