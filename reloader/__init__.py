"""The reloader: keeps a tenant's KEDA operator watching exactly that tenant's namespaces."""
