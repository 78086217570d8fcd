"""Fault-injection tier: real workers under a supervisor, real Redis and PostgreSQL, nemeses, a checker."""
