"""The SQLite store's tests need no server: each test gets a database file in its own temporary directory."""
