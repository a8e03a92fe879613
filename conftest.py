"""Root conftest: the real-server fixtures for every store test suite in this repository."""

pytest_plugins = ["gojob_core.testing.servers", "gojob_store_resp.testing", "gojob_store_etcd.testing",
                  "gojob_core.testing.processes"]
