import os

from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=100)
    v = models.IntegerField()

    class Meta:
        app_label = "django_app"
        # Unique per run (set by django_test.py), so parallel or leftover runs do not collide.
        db_table = os.environ.get("DJANGO_TEST_TABLE", "drv_django_item")
