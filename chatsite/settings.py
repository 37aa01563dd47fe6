"""Parley settings: one module, every value from the environment (or an optional .env file).

With no variable set the site runs on the embedded defaults: SQLite, the in-memory channel layer,
the local-memory cache and eager Celery. See ../shared/CONTRACT.md section 1 and the README.
"""

import math
import re
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit

import environ
from celery.schedules import crontab
from cryptography.fernet import Fernet
from django.utils.module_loading import import_string

from conversations.llm.model_ids import PROVIDERS as MODEL_PROVIDERS
from conversations.llm.model_ids import model_id_parse

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():  # optional; reading a missing one would log a complaint
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def _config_error(variable: str, problem: str) -> "SystemExit":
    # One line naming the variable, no traceback: the operator fixes the environment and restarts.
    return SystemExit(f"parley: configuration error: {variable} {problem}")


def _bool(name: str, default: bool) -> bool:
    raw = env.str(name, default="")
    if raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise _config_error(name, f"must be true or false, not {raw!r}")


def _int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = env.str(name, default="")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _config_error(name, f"must be a whole number, not {raw!r}") from None
    # A number of the right type that cannot work (no threads, no connections, a negative
    # count) would otherwise fail later, in every chat turn or page, far from its cause.
    if minimum is not None and value < minimum:
        raise _config_error(name, f"must be at least {minimum}, not {raw!r}")
    return value


def _float(name: str, default: float, *, minimum: float = 0.0, above: bool = False) -> float:
    """A finite number of seconds (or a factor): at least `minimum`, or more than it with `above`."""
    raw = env.str(name, default="")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise _config_error(name, f"must be a number, not {raw!r}") from None
    if not math.isfinite(value):
        raise _config_error(name, f"must be a finite number, not {raw!r}")
    if value < minimum or (above and value == minimum):
        raise _config_error(name, f"must be {'more than' if above else 'at least'} {minimum:g}, not {raw!r}")
    return value


def _fernet_keys(name: str) -> list[str]:
    # Checked here, not at the first provider call: every process (Daphne, Celery, manage.py)
    # loads settings, and none may run with provider secrets it cannot encrypt or read.
    keys = [k.strip() for k in env.list(name, default=[]) if k.strip()]
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            # Never echo the key: name its position only.
            raise _config_error(
                name,
                f"entry {position} is not a Fernet key (32 url-safe base64-encoded bytes; "
                "make one with Fernet.generate_key())",
            ) from None
    return keys


DEBUG = _bool("DJANGO_DEBUG", False)
HTTPS = _bool("DJANGO_HTTPS", False)
# Behind TLS is what "production" means here: the secret key must then be set for real.
PRODUCTION = HTTPS
TESTING = "pytest" in sys.modules or (len(sys.argv) > 1 and sys.argv[1] == "test")

_DEV_SECRET = "parley-dev-secret-key-not-for-production-0123456789-abcdefghijklmnop"  # noqa: S105 - public on purpose
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
USING_DEV_SECRET = not SECRET_KEY
if USING_DEV_SECRET:
    if PRODUCTION:
        raise _config_error("DJANGO_SECRET_KEY", "is required when DJANGO_HTTPS=true")
    SECRET_KEY = _DEV_SECRET
# Whoever guesses the key signs session cookies as anyone, the administrator included. Django's
# own test of a key (check --deploy, security.W009), at start, where nothing else runs it.
elif PRODUCTION and (
    len(SECRET_KEY) < 50
    or len(set(SECRET_KEY)) < 5
    or SECRET_KEY.startswith("django-insecure-")
    or SECRET_KEY == _DEV_SECRET
):
    raise _config_error(
        "DJANGO_SECRET_KEY",
        "is too weak for DJANGO_HTTPS=true: use 50 or more random characters "
        "(python3 -c \"import secrets; print(secrets.token_urlsafe(50))\")",
    )

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])
if not ALLOWED_HOSTS:
    raise _config_error("DJANGO_ALLOWED_HOSTS", "must name at least one host")
if TESTING and "testserver" not in ALLOWED_HOSTS:
    ALLOWED_HOSTS.append("testserver")

INSTALLED_APPS = [
    "daphne",
    "chatsite.apps.ParleyAdminConfig",  # django.contrib.admin with the dashboard (issue 7)
    # Before django.contrib.auth: of two apps with a command of the same name, the first wins, and
    # accounts' createsuperuser refuses the names sign-up refuses.
    "accounts",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "accounts.apps.AxesConfig",  # django-axes, with a translatable name
    "conversations",
    "billing",
]

MIDDLEWARE = [
    "chatsite.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "chatsite.middleware.SecurityHeadersMiddleware",
    "chatsite.middleware.ProbesAnyHostMiddleware",  # above all that read the Host: probes come by address
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "chatsite.middleware.NoContentMiddleware",  # above CommonMiddleware: strips what it adds to a 204
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.middleware.UserLanguageMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks, so it sees the outcome of authentication.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "chatsite.context_processors.site",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
_db_url = env.str("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
_db_scheme = urlsplit(_db_url).scheme
if _db_scheme not in {"sqlite", "postgres", "postgresql", "pgsql", "psql"}:
    raise _config_error("DATABASE_URL", "must be sqlite:///PATH or postgres://USER@HOST:PORT/NAME")
# A password in the URL must be percent-encoded (@ / : # ? % and space mean something there):
# written as it is, it cuts the URL elsewhere, and the site would log in to another host or as another user.
def _encoding_hint(password_setting: str) -> str:
    return f"(percent-encode @ / : # ? % in its password, or give the password in {password_setting})"


_URL_ENCODING_HINT = _encoding_hint("DATABASE_PASSWORD")
try:
    _db = environ.Env.db_url_config(_db_url)
except Exception as exc:  # noqa: BLE001 - any parse failure is a configuration error
    raise _config_error("DATABASE_URL", f"cannot be parsed ({type(exc).__name__}) {_URL_ENCODING_HINT}") from None
_db_parts = urlsplit(_db_url)
if _db_scheme != "sqlite" and (
    not _db_parts.hostname
    or not _db.get("HOST")
    or not _db.get("NAME")
    # An "@" or a second "/" after the host: the URL was cut inside an unencoded password.
    or "@" in _db_parts.path
    or "/" in _db["NAME"]
):
    raise _config_error("DATABASE_URL", f"must name a host and a database {_URL_ENCODING_HINT}")
# The password apart from the URL, taken as it is: docker-compose.yml passes POSTGRES_PASSWORD so,
# since compose cannot percent-encode it into a URL. Never both: one of them would go unused.
_db_password = env.str("DATABASE_PASSWORD", default="")
if _db_password:
    if _db_scheme == "sqlite":
        raise _config_error("DATABASE_PASSWORD", "is set, but DATABASE_URL names SQLite, which takes no password")
    if _db.get("PASSWORD"):
        raise _config_error("DATABASE_PASSWORD", "is set and DATABASE_URL holds a password too: give it in one place")
    _db["PASSWORD"] = _db_password
# Read (and checked) on SQLite too, where it is unused: a typo must not wait for the move to PostgreSQL.
DATABASE_POOL_SIZE = _int("DATABASE_POOL_SIZE", 20, minimum=1)
if _db["ENGINE"] == "django.db.backends.sqlite3":
    _db["OPTIONS"] = {
        # WAL lets readers run beside the writer; IMMEDIATE transactions take the write lock at
        # BEGIN so concurrent turns queue on the busy timeout instead of failing "database is locked".
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # Tests use a file database so threads and processes share it, as in production.
    _db["TEST"] = {"NAME": str(BASE_DIR / "test_db.sqlite3")}
else:
    # Under ASGI every request runs in its own thread, so Django's persistent connections
    # (CONN_MAX_AGE) would leak one per thread. A pool (psycopg_pool, Django 5.1+) instead lends
    # each call a connection that is already open: without it, every database call of a chat turn
    # paid a new TCP connection and login (5-10 ms each, several per turn).
    _db["CONN_MAX_AGE"] = 0
    # The pool checks a connection before lending it (an empty query, well under a millisecond):
    # after PostgreSQL restarts, or a proxy drops idle connections, every idle one in the pool is
    # dead, and without the check each was lent once more, to fail its request with a 500.
    _db["CONN_HEALTH_CHECKS"] = True
    # "timeout": how long a request waits for a connection, enough to ride out a load spike
    # (/readyz waits only 2 s: chatsite.health.READY_DATABASE_TIMEOUT).
    _db["OPTIONS"] = {"pool": {"min_size": 1, "max_size": DATABASE_POOL_SIZE, "timeout": 10}}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
IS_POSTGRES = _db["ENGINE"].endswith("postgresql")

# --- Redis: channel layer, cache, Celery ----------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
# As for DATABASE_URL: a password in the URL must be percent-encoded, or given in REDIS_PASSWORD.
_REDIS_ENCODING_HINT = _encoding_hint("REDIS_PASSWORD")
_redis_password = env.str("REDIS_PASSWORD", default="")
if _redis_password and not REDIS_URL:
    raise _config_error("REDIS_PASSWORD", "is set, but REDIS_URL is not: set REDIS_URL to redis://HOST:PORT/DB")
if REDIS_URL:
    _r = urlsplit(REDIS_URL)
    if _r.scheme not in {"redis", "rediss", "unix"} or (_r.scheme != "unix" and not _r.hostname):
        raise _config_error("REDIS_URL", f"must look like redis://HOST:PORT/DB {_REDIS_ENCODING_HINT}")
    try:
        _r.port  # noqa: B018 - raises ValueError on a non-numeric port
    except ValueError:
        raise _config_error("REDIS_URL", f"has a port that is not a number {_REDIS_ENCODING_HINT}") from None
    _r_userinfo = _r.netloc.rpartition("@")[0]
    if (
        # "#" or "?" in a password ends the address there; "@" or "/" in it leaves the rest in the path.
        _r.fragment
        or (_r.scheme != "unix" and not re.fullmatch(r"(/\d*)?", _r.path))
        # Every client here decodes the password (redis-py, kombu): a "%" not starting an encoding
        # is a password written as it is, and one that happens to (%41) would log in with another.
        or re.search(r"%(?![0-9A-Fa-f]{2})", _r_userinfo)
    ):
        raise _config_error("REDIS_URL", f"must be redis://[:PASSWORD@]HOST:PORT/DB {_REDIS_ENCODING_HINT}")
    # The password apart from the URL, taken as it is (docker-compose.yml passes it so). It goes into
    # REDIS_URL percent-encoded, so that every part reading REDIS_URL (the cache, the channel layer,
    # Celery's broker and results, /readyz) logs in with it. Never both: one would go unused.
    if _redis_password:
        if _r.password is not None:
            raise _config_error("REDIS_PASSWORD", "is set and REDIS_URL holds a password too: give it in one place")
        _r_username = _r_userinfo.partition(":")[0]  # an ACL user name, kept as written
        REDIS_URL = _r._replace(
            netloc=f"{_r_username}:{quote(_redis_password, safe='')}@{_r.netloc.rpartition('@')[2]}"
        ).geturl()
    # channels_redis' pub/sub layer, not its core one. The core layer reads a process's messages
    # one at a time from a shared Redis inbox (several round trips each) and drops, without a word,
    # what arrives while that inbox is at capacity: at 100 streams of 25 frames a second its
    # process fell behind and streams lost deltas (BENCHMARKS.md, "Chat streaming"). Pub/sub pushes
    # each frame to the subscribed processes. Delivery is at most once either way; what a socket
    # missed while away comes back from the stream buffer ("resume") and the saved message.
    # redis-py retries nothing by default: after a Redis restart each pooled connection is dead and
    # failed its next command, so each process's first reply failed at its "start" frame. A dropped
    # connection is retried on a fresh one (as chatsite.asynccache does), never a timeout.
    from chatsite.redis_retry import dropped_connection_retry

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [
                    {"address": REDIS_URL, "retry": dropped_connection_retry()}
                ]
            },
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "chatsite.rediscache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="parley"),
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
    # Tests run tasks in-process even on Redis; a deployment runs real workers.
    CELERY_TASK_ALWAYS_EAGER = _bool("CELERY_TASK_ALWAYS_EAGER", TESTING)
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "chatsite.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    # The in-memory transport ignores the host, but kombu warns "No hostname was supplied" each
    # time its producer pool opens a connection to a URL naming none (the first task queued).
    CELERY_BROKER_URL = "memory://localhost"
    CELERY_RESULT_BACKEND = None
    # No broker: tasks run in-process, in the thread that queued them (after commit).
    CELERY_TASK_ALWAYS_EAGER = True
# Without a broker no Celery beat runs beside the site: the ASGI process runs the schedule below
# in a thread of its own (chatsite.celery.beat_embedded_start), so the embedded default reaps dead
# replies and releases stale holds too. With Redis, the `beat` service runs it, once.
CELERY_BEAT_EMBEDDED = _bool("CELERY_BEAT_EMBEDDED", not REDIS_URL and not TESTING)
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
# Logging is configured once, by Django (LOGGING below); a worker must not replace it.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Every periodic job in one place. Each task is idempotent, so a late or doubled run is harmless.
CELERY_BEAT_SCHEDULE = {
    # Replies whose process died are marked error instead of streaming forever.
    "conversations-reap-stale-replies": {"task": "conversations.tasks.replies_reap_stale", "schedule": 60.0},
    # Budget holds left by a dead process are released.
    "billing-reservations-expire": {"task": "billing.tasks.reservations_expire", "schedule": 60.0},
    "billing-keys-health-check": {"task": "billing.keys_health_check", "schedule": 15 * 60.0},
    "accounts-exports-purge-expired": {"task": "accounts.exports_purge_expired", "schedule": crontab(minute="*/15")},
    # Every 2 minutes, as a dead run's lease (accounts.data_rights.LEASE) lasts 2: one read of a small table.
    "accounts-erasures-resume": {"task": "accounts.erasures_resume", "schedule": crontab(minute="*/2")},
    "accounts-conversations-retention": {
        "task": "accounts.conversations_retention",
        "schedule": crontab(hour=3, minute=30),
    },
}

# --- Auth -----------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    # First, so locked-out credentials are refused before the password is even checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if TESTING:
    # Tests hash hundreds of passwords; the hash's cost is not what they test.
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat"
LOGOUT_REDIRECT_URL = "login"
SIGNUP_OPEN = _bool("SIGNUP_OPEN", True)

# django-axes: throttle wrong passwords per (username, client IP).
AXES_FAILURE_LIMIT = _int("AXES_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=_int("AXES_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "accounts.views.lockout"
# Axes keeps the form of each refused attempt, for the admin to read, masking only "password"
# and these (its defaults are the first two): a password change page posts the guessed current
# password and the new one under other names, and the CSRF token is the browser's secret.
AXES_SENSITIVE_PARAMETERS = [
    "username", "ip_address", "old_password", "new_password1", "new_password2", "password1", "password2",
    "csrfmiddlewaretoken",
]  # fmt: skip
# The client IP is REMOTE_ADDR unless the operator says how many proxies stand in front; then
# it is the address that many hops from the right of X-Forwarded-For. Whatever the client puts
# at the left of that header is never believed (chatsite.net.client_ip).
TRUSTED_PROXY_COUNT = _int("TRUSTED_PROXY_COUNT", 0, minimum=0)
AXES_CLIENT_IP_CALLABLE = "chatsite.net.client_ip"
AXES_VERBOSE = False  # axes prints a banner at start; our logging says what matters

# --- Sessions, CSRF, security headers -------------------------------------------------------
# Read through the cache, kept in the database (Django's cached_db, made safe on cache faults):
# every chat message re-checks its socket's session, and a cache read is far cheaper than a query.
# Logouts clear both, so with Redis every process agrees; on the embedded defaults the
# local-memory cache serves the one process there is.
SESSION_ENGINE = "accounts.sessions"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = 60 * 60 * 24 * 14
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    # Probes call the container over plain HTTP from inside; they must not be redirected.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
    SECURE_HSTS_SECONDS = 60 * 60 * 24 * 365
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    # TLS ends at the proxy in front of Daphne; it says so in this header.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    CSRF_TRUSTED_ORIGINS = [f"https://{h.lstrip('.')}" for h in ALLOWED_HOSTS if h != "*"]
# Request bodies: JSON and forms are small; a larger body is refused before it is read whole.
DATA_UPLOAD_MAX_MEMORY_SIZE = _int("DATA_UPLOAD_MAX_MEMORY_SIZE", 1024 * 1024, minimum=1)
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

# --- Internationalization -------------------------------------------------------------------
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("ko", "한국어")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static and media -----------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not (DEBUG or TESTING)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Development and tests serve static files straight from static/ (no collectstatic needed).
WHITENOISE_USE_FINDERS = DEBUG or TESTING
WHITENOISE_AUTOREFRESH = DEBUG or TESTING
# A relative path is the project's folder's, not the working folder of whichever process reads it:
# the worker writes exports that the web process serves. Empty is the default, not the working folder.
MEDIA_ROOT = BASE_DIR / (env.str("MEDIA_ROOT", default="").strip() or "media")
# Exports are private files, served only through an authenticated view, never from MEDIA_URL.
EXPORT_ROOT = MEDIA_ROOT / "exports"
EXPORT_TTL_HOURS = _int("EXPORT_TTL_HOURS", 24, minimum=1)

# --- Email ----------------------------------------------------------------------------------
# Console by default (password-reset links appear in the server's output); SMTP with EMAIL_URL,
# e.g. smtp+tls://user:password@smtp.example.com:587.
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
_email_url = env.str("EMAIL_URL", default="")
if _email_url:
    if urlsplit(_email_url).scheme not in {"smtp", "smtps", "smtp+tls", "smtp+ssl"} or not urlsplit(_email_url).hostname:
        raise _config_error("EMAIL_URL", "must look like smtp+tls://USER:PASSWORD@HOST:PORT")
    try:
        _email = environ.Env.email_url_config(_email_url)
        urlsplit(_email_url).port  # noqa: B018 - raises ValueError on a non-numeric port
    except Exception:  # noqa: BLE001 - any parse failure is a configuration error
        raise _config_error("EMAIL_URL", "cannot be parsed") from None
    globals().update({k: v for k, v in _email.items() if k.startswith("EMAIL_")})
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_TIMEOUT = 15
else:
    # Imported now, not at the first password reset: that page says "sent" whatever happens next,
    # and the failure would be a traceback in the log. Only an import failure is the setting's
    # fault; a backend whose import needs the settings (finished after this module) is left alone.
    try:
        import_string(EMAIL_BACKEND)
    except ImportError:
        raise _config_error(
            "EMAIL_BACKEND",
            "must be the dotted path of an email backend, such as django.core.mail.backends.smtp.EmailBackend "
            f"(or set EMAIL_URL), not {EMAIL_BACKEND!r}",
        ) from None
    except Exception:  # noqa: BLE001, S110 - see above
        pass
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="parley@localhost")

# --- Product settings -----------------------------------------------------------------------
MAX_MESSAGE_CHARS = _int("MAX_MESSAGE_CHARS", 32_000, minimum=1)
# The offline demo model's pause between words, so streaming and stop are visible.
DEMO_DELAY_MS = _int("DEMO_DELAY_MS", 20, minimum=0)
# Provider-key health (billing.keys): the circuit breaker and cooldowns, in seconds.
KEY_FAILURE_THRESHOLD = _int("KEY_FAILURE_THRESHOLD", 3, minimum=1)
KEY_CIRCUIT_COOLDOWN = _float("KEY_CIRCUIT_COOLDOWN", 60.0)
KEY_MAX_COOLDOWN = _float("KEY_MAX_COOLDOWN", 3600.0)
KEY_RATE_LIMIT_COOLDOWN = _float("KEY_RATE_LIMIT_COOLDOWN", 60.0)
KEY_RETRY_BACKOFF = _float("KEY_RETRY_BACKOFF", 0.25)
KEY_TEST_TIMEOUT = _float("KEY_TEST_TIMEOUT", 20.0, above=True)
if env.str("KEY_DRAIN_SECONDS", default=""):
    KEY_DRAIN_SECONDS = _float("KEY_DRAIN_SECONDS", 660.0)
DEFAULT_MODEL = env.str("DEFAULT_MODEL", default="demo:echo")
# Its form only, by the grammar prices and profiles use (conversations.llm.model_ids imports
# nothing from Django): whether it has a price is decided per request, as prices change.
if model_id_parse(DEFAULT_MODEL) is None:
    raise _config_error(
        "DEFAULT_MODEL",
        f"must look like provider:model ({', '.join(MODEL_PROVIDERS[:-1])} or {MODEL_PROVIDERS[-1]}), not {DEFAULT_MODEL!r}",
    )
FIELD_ENCRYPTION_KEYS = _fernet_keys("FIELD_ENCRYPTION_KEYS")
ALLOW_PRIVATE_BASE_URLS = _bool("ALLOW_PRIVATE_BASE_URLS", False)
CONVERSATION_RETENTION_DAYS = _int("CONVERSATION_RETENTION_DAYS", 0, minimum=0) or None  # 0: keep
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="")
ANTHROPIC_API_KEY = env.str("ANTHROPIC_API_KEY", default="")
ANTHROPIC_BASE_URL = env.str("ANTHROPIC_BASE_URL", default="")
# A base URL is imported with its key, never alone: it would be dropped without a word.
for _provider, _key, _url in (("OPENAI", OPENAI_API_KEY, OPENAI_BASE_URL), ("ANTHROPIC", ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL)):
    if _url.strip() and not _key.strip():
        raise _config_error(
            f"{_provider}_BASE_URL",
            f"is set, but {_provider}_API_KEY is not: set it too (any text, for a server that asks no key)",
        )
# Provider call timeouts, seconds: connecting, waiting for the first token, the whole reply.
LLM_CONNECT_TIMEOUT = _float("LLM_CONNECT_TIMEOUT", 10.0, above=True)
LLM_FIRST_TOKEN_TIMEOUT = _float("LLM_FIRST_TOKEN_TIMEOUT", 60.0, above=True)
LLM_TOTAL_TIMEOUT = _float("LLM_TOTAL_TIMEOUT", 600.0, above=True)
# Threads a process gives the chat turns' database calls (conversations.turns), beside the one
# thread Channels runs other sync code on. Keep it under DATABASE_POOL_SIZE with PostgreSQL.
TURN_DB_THREADS = _int("TURN_DB_THREADS", 4, minimum=1)
# Rate limits per user (overridable per user and team in the admin).
RATE_LIMIT_REQUESTS_PER_MINUTE = _int("RATE_LIMIT_REQUESTS_PER_MINUTE", 20, minimum=1)
RATE_LIMIT_TOKENS_PER_MINUTE = _int("RATE_LIMIT_TOKENS_PER_MINUTE", 200_000, minimum=1)
# Websocket abuse caps per user.
WS_MAX_SOCKETS_PER_USER = _int("WS_MAX_SOCKETS_PER_USER", 20, minimum=1)
WS_MAX_FRAMES_PER_SECOND = _int("WS_MAX_FRAMES_PER_SECOND", 20, minimum=1)

# --- Logging --------------------------------------------------------------------------------
LOG_FORMAT = env.str("LOG_FORMAT", default="text")
if LOG_FORMAT not in {"text", "json"}:
    raise _config_error("LOG_FORMAT", f"must be text or json, not {LOG_FORMAT!r}")
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise _config_error("LOG_LEVEL", f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {LOG_LEVEL!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "chatsite.logging.RequestIdFilter"},
        # Before "redact": a record it shortens has no traceback left to format.
        "expected": {"()": "chatsite.logging.ExpectedConditionsFilter"},
        "redact": {"()": "chatsite.logging.RedactFilter"},
    },
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "chatsite.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["request_id", "expected", "redact"],
            "formatter": "json" if LOG_FORMAT == "json" else "text",
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # Pinned whatever LOG_LEVEL says: at DEBUG these write SQL with its parameters (message
    # text), request and response headers (keys, cookies) or bodies (prompts), or full paths
    # (password-reset tokens). What they say at WARNING and above carries none of that.
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # Django logs a failed request's POST data at DEBUG in some paths; keep it out.
        "django.request": {"level": "ERROR"},
        "django.channels.server": {"level": "WARNING"},  # runserver's request lines: full paths
        "axes": {"level": "WARNING"},
        # One line per request comes from chatsite.middleware; Daphne's own would lack the id.
        "daphne": {"level": "WARNING"},
        "channels": {"level": "WARNING"},
        "channels_redis": {"level": "WARNING"},
        # The provider SDKs and their HTTP stacks: headers (Authorization, x-api-key) and bodies.
        "openai": {"level": "WARNING"},
        "anthropic": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "httpcore2": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
        "aiohttp": {"level": "WARNING"},
        "asyncio": {"level": "WARNING"},
        # Celery's INFO lines carry task arguments and return values.
        "celery": {"level": "WARNING"},
    },
}

# Development defaults are announced by the processes that serve (Daphne, Celery, runserver,
# check), not by every management command: a command's bad input must stay a one-line error.
_PROCESS = Path(sys.argv[0]).name if sys.argv else ""
WARN_DEV_DEFAULTS = not TESTING and (
    _PROCESS in {"daphne", "celery"} or (len(sys.argv) > 1 and sys.argv[1] in {"runserver", "check"})
)
# Last, so that a configuration error above stops the process before any warning is printed.
if USING_DEV_SECRET and WARN_DEV_DEFAULTS:
    sys.stderr.write("parley: warning: DJANGO_SECRET_KEY is not set: using the development key\n")
