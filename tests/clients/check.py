"""Checks for the client scripts that hold under `python -O`: a bare `assert` is removed
when PYTHONOPTIMIZE is set, and the script would then pass on anything."""


def check(condition, *context):
    """Raises AssertionError with `context` unless `condition` holds."""
    if not condition:
        raise AssertionError(" ".join(str(c) for c in context) or "check failed")
