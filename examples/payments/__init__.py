"""The payments example: a retail bank account on SQLite that the payments contract binds to."""
