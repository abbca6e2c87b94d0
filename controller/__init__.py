"""The platform controller: what one copy serves for every tenant (ownership, bindings,
certificates, Lease release), installed with the router release."""
