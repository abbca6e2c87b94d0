"""The platform controller: one process serves every tenant's operator RoleBindings, namespace
sets, deployment-mode patches and Lease releases (docs/controller.md)."""
