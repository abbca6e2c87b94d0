"""Real local servers standing in for external services in tests."""
