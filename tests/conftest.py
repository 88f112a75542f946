"""Shared pytest settings for the test suite."""

# The seed library's own tests and example scripts are fixtures, run in
# subprocesses by tests/test_seed_suite.py and tests/test_seed_examples.py
# (their own conftest and pytest.ini; expected differences listed there).
collect_ignore = ["seed_tests", "seed_examples"]
