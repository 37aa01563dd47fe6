from django.contrib.admin.apps import AdminConfig


class ParleyAdminConfig(AdminConfig):
    """django.contrib.admin with Parley's site (the dashboard) as `admin.site`."""

    default_site = "chatsite.admin_site.ParleyAdminSite"

    def ready(self):
        super().ready()  # autodiscovers every app's admin.py
        from billing.admin_usage import register_usage_admins

        register_usage_admins()
