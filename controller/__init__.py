"""The platform controller: what one copy serves for every tenant, installed with the router
release: each tenant's operator RoleBindings, namespace sets, deployment-mode patches and Lease
releases (docs/controller.md), and the certificates (`controller.certs`)."""
