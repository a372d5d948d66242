"""A one-model Django app for tests/drivers/django_test.py (no migrations: `migrate --run-syncdb` creates it)."""
