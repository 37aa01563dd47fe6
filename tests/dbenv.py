"""The test's database as a DATABASE_URL, for the processes a test starts (Daphne, a command, a
fresh interpreter), so they work on the same rows as the test."""

from urllib.parse import quote

from django.db import connection


def database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    # Percent-encoded, as the settings read them: a password may hold @ / : # ? %.
    auth = quote(db["USER"], safe="") + (f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
