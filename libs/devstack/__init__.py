"""Local stack for `make run` and the test suite: real Redis, SecantusDB, sandbox and services."""
