"""The PostgreSQL store's tests run against a real server started for the session (see
gojob_store_postgres.testing); each test uses a schema of its own on it."""

from gojob_store_postgres.testing import postgres_server  # noqa: F401  (the session fixture)
