"""Test fakes: real local servers that stand in for remote services (see `openai_server`)."""
