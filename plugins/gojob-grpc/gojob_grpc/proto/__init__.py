"""Generated gRPC stubs of the gojob.v1 API (regenerate with `tox -e proto`)."""
