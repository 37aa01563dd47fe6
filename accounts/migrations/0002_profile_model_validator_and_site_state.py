import accounts.models
from django.db import migrations, models


def seed_site_state(apps, schema_editor):
    # The one SiteState row that the first sign-up claims with a conditional UPDATE. A database
    # that already has a superuser (made with createsuperuser) has had its administrator.
    SiteState = apps.get_model("accounts", "SiteState")
    User = apps.get_model("accounts", "User")
    SiteState.objects.get_or_create(pk=1, defaults={"admin_claimed": User.objects.filter(is_superuser=True).exists()})


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0001_initial'),
    ]

    operations = [
        migrations.AlterField(
            model_name='user',
            name='default_model',
            field=models.CharField(blank=True, max_length=120, validators=[accounts.models.validate_model_id], verbose_name='default model'),
        ),
        migrations.RunPython(seed_site_state, migrations.RunPython.noop),
    ]
