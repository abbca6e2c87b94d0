"""The small process inside a tenant's KEDA operator pod (stdlib only)."""
