from django.db import migrations


class Migration(migrations.Migration):
    """The device list filtered by tag pages by device id: an index on (tag_id, device_id) gives the
    devices of one tag in id order, so a page is a range scan however common or rare the tag. The
    through table of Device.tags is created by Django, so the index is added in SQL here."""

    dependencies = [("devices", "0002_initial")]

    operations = [
        migrations.RunSQL(
            "CREATE INDEX device_tags_tag_device_idx ON devices_device_tags (tag_id, device_id)",
            reverse_sql="DROP INDEX device_tags_tag_device_idx",
        ),
    ]
