"""A one-model Django app for tests/drivers/django_test.py (no migrations: `migrate --run-syncdb` creates it)."""
import os

from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=100)
    v = models.IntegerField()
    body = models.TextField(default="")

    class Meta:
        app_label = "django_app"
        # Unique per run (set by django_test.py), so parallel or leftover runs do not collide.
        db_table = os.environ.get("DJANGO_TEST_TABLE", "drv_django_item")
