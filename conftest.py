# Repo-root conftest: makes `models` and `utils` importable in tests.
