"""The MySQL store's tests run against a real MariaDB server started for the session (see
gojob_store_mysql.testing); each test uses a database of its own on it."""

from gojob_store_mysql.testing import mysql_server  # noqa: F401  (the session fixture)
