"""The router: the single external-metrics APIService backend that forwards each request to its tenant's KEDA."""
