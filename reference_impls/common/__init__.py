"""Shared machinery of the reference implementations (see README.md beside this file)."""
