"""The certificate controller: the CAs, every tenant's certificates and the APIService caBundle."""
