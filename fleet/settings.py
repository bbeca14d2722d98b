"""Settings of the platform, read from the environment (see docs/configuration.md for every variable).

The embedded defaults (SQLite, local files, a filesystem Celery transport, a local Mosquitto) let the
platform run with nothing configured. With DEBUG off, which is the default, the platform refuses to start
on a missing or default secret, so a production deployment cannot run on a value published in this repo.
"""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from fleet.env import database_from_url, env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = Path(env_str("FLEET_STATE_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("FLEET_DEBUG", False)

# Published, therefore only usable with DEBUG on (the embedded run). Never accepted in production.
INSECURE_DEFAULT_SECRET_KEY = "insecure-embedded-default-secret-key-do-not-use-in-production"  # noqa: S105
INSECURE_DEFAULT_KEY_ENCRYPTION_SECRET = "insecure-embedded-default-key-encryption-secret"  # noqa: S105

SECRET_KEY = env_str("FLEET_SECRET_KEY") or (INSECURE_DEFAULT_SECRET_KEY if DEBUG else "")
# Encrypts the private keys the platform holds at rest (device CA, online update-signing keys).
KEY_ENCRYPTION_SECRET = env_str("FLEET_KEY_ENCRYPTION_SECRET") or (
    INSECURE_DEFAULT_KEY_ENCRYPTION_SECRET if DEBUG else ""
)

if not DEBUG:
    if not SECRET_KEY or SECRET_KEY == INSECURE_DEFAULT_SECRET_KEY:
        raise ImproperlyConfigured(
            "FLEET_SECRET_KEY is missing or set to the published default; set a long random value "
            "(or FLEET_DEBUG=1 for a local development run)."
        )
    if not KEY_ENCRYPTION_SECRET or KEY_ENCRYPTION_SECRET == INSECURE_DEFAULT_KEY_ENCRYPTION_SECRET:
        raise ImproperlyConfigured(
            "FLEET_KEY_ENCRYPTION_SECRET is missing or set to the published default; set a long random "
            "value (or FLEET_DEBUG=1 for a local development run)."
        )
    if len(SECRET_KEY) < 32 or len(KEY_ENCRYPTION_SECRET) < 32:
        raise ImproperlyConfigured("FLEET_SECRET_KEY and FLEET_KEY_ENCRYPTION_SECRET need at least 32 characters.")

ALLOWED_HOSTS = env_list("FLEET_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("FLEET_CSRF_TRUSTED_ORIGINS", [])
# The URL devices and operators use to reach this platform; returned at enrollment.
PUBLIC_URL = env_str("FLEET_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "fleet",
    "devices",
    "ota",
    "telemetry",
    "policies",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "fleet.urls"
WSGI_APPLICATION = "fleet.wsgi.application"
ASGI_APPLICATION = "fleet.asgi.application"
AUTH_USER_MODEL = "fleet.User"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": database_from_url(env_str("DATABASE_URL", f"sqlite:///{STATE_DIR / 'fleet.sqlite3'}"))}
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The embedded run has several processes writing one file: wait for the lock instead of failing.
    # IMMEDIATE: a write transaction takes the lock when it begins, so it waits up to `timeout` for it;
    # a deferred one that tries to upgrade from reading to writing fails at once with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(env_str("FLEET_STATIC_ROOT", str(STATE_DIR / "static")))

# Artifact storage: local files by default, S3 (through django-storages/boto3) when STORAGE_BACKEND=s3.
STORAGE_BACKEND = env_str("STORAGE_BACKEND", "local")
if STORAGE_BACKEND == "local":
    _default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": env_str("STORAGE_ROOT", str(STATE_DIR / "artifacts"))},
    }
elif STORAGE_BACKEND == "s3":
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env_str("STORAGE_S3_BUCKET"),
            "endpoint_url": env_str("STORAGE_S3_ENDPOINT_URL"),
            "region_name": env_str("STORAGE_S3_REGION"),
            "access_key": env_str("STORAGE_S3_ACCESS_KEY_ID"),
            "secret_key": env_str("STORAGE_S3_SECRET_ACCESS_KEY"),
            "querystring_expire": env_int("STORAGE_S3_URL_EXPIRY_SECONDS", 900, minimum=60),
        },
    }
else:
    raise ImproperlyConfigured(f"STORAGE_BACKEND={STORAGE_BACKEND!r}: use 'local' or 's3'")
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "fleet.api.authentication.OperatorTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
        "devices.authentication.DeviceTokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["fleet.permissions.OperatorRolePermission"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "fleet.api.errors.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "fleet.api.pagination.IdCursorPagination",
    "PAGE_SIZE": 100,
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Edge-AI fleet platform API",
    "DESCRIPTION": "Provisioning and automation API: devices, enrollment, updates, telemetry, policies.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}

# Celery: Redis in production; a filesystem transport (no server) for the embedded run.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _celery_dir = STATE_DIR / "celery"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_celery_dir / "queue"),
        "data_folder_out": str(_celery_dir / "queue"),
        "processed_folder": str(_celery_dir / "processed"),
        "control_folder": str(_celery_dir / "control"),  # kombu's default is ./control (the working dir)
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULE: dict = {
    # Telemetry (telemetry/tasks.py): rollups of the minutes that got records, day partitions ahead,
    # retention (drop old partitions, delete old rollups and dead letters).
    "telemetry-rollups": {"task": "telemetry.rollups_update", "schedule": 30.0},
    "telemetry-partitions": {"task": "telemetry.partitions_maintain", "schedule": 3600.0},
    "telemetry-retention": {"task": "telemetry.retention_apply", "schedule": 3600.0},
    # Keep the broker's revocation list fresh: it is valid for FLEET_CRL_DAYS, rewritten every hour.
    "devices-crl-refresh": {"task": "devices.crl_refresh", "schedule": 3600.0},
}

# MQTT: where devices connect (returned at enrollment) and where the platform's own clients connect.
MQTT_URL = env_str("MQTT_URL", "mqtts://127.0.0.1:8883")
MQTT_PLATFORM_URL = env_str("MQTT_PLATFORM_URL", "mqtts://127.0.0.1:8884")
# Folder with the broker's CA files and the platform clients' certificates (see fleet/broker.py).
MQTT_TLS_DIR = Path(env_str("MQTT_TLS_DIR", str(STATE_DIR / "broker")))

# Telemetry retention (days): raw inference records and heartbeats, per-minute rollups, dead letters,
# presence history.
TELEMETRY_RAW_RETENTION_DAYS = env_int("TELEMETRY_RAW_RETENTION_DAYS", 14, minimum=1)
TELEMETRY_ROLLUP_RETENTION_DAYS = env_int("TELEMETRY_ROLLUP_RETENTION_DAYS", 400, minimum=1)
TELEMETRY_DEAD_LETTER_RETENTION_DAYS = env_int("TELEMETRY_DEAD_LETTER_RETENTION_DAYS", 30, minimum=1)
# Presence history (telemetry.PresenceEvent): a few rows per device and connection, kept longer than raw rows.
TELEMETRY_PRESENCE_RETENTION_DAYS = env_int("TELEMETRY_PRESENCE_RETENTION_DAYS", 90, minimum=1)

# Device identity.
DEVICE_CERT_DAYS = env_int("FLEET_DEVICE_CERT_DAYS", 90, minimum=1)
DEVICE_CA_COMMON_NAME = env_str("FLEET_DEVICE_CA_COMMON_NAME", "Fleet Device CA")
CRL_DAYS = env_int("FLEET_CRL_DAYS", 7, minimum=1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("FLEET_LOG_LEVEL", "INFO")},
    # urllib3 logs every upstream connection and request of the LLM gateway at DEBUG: quiet even then.
    "loggers": {"django.server": {"level": "WARNING"}, "urllib3": {"level": "WARNING"}},
}

if not DEBUG:
    SESSION_COOKIE_HTTPONLY = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SESSION_COOKIE_SECURE = env_bool("FLEET_SECURE_COOKIES", False)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# Enrollment is the one unauthenticated write: rate-limit it per client address.
ENROLL_RATE_LIMIT = env_str("FLEET_ENROLL_RATE_LIMIT", "100000/minute")

# LLM gateway (policies app): OpenAI-compatible upstreams as a JSON list, the budget currency, and the
# output cap the gateway forwards when neither the request nor the policy sets one. See docs/configuration.md.
LLM_UPSTREAMS = env_str("LLM_UPSTREAMS", "[]")
LLM_CURRENCY = env_str("LLM_CURRENCY", "USD")
LLM_DEFAULT_MAX_OUTPUT_TOKENS = env_int("LLM_DEFAULT_MAX_OUTPUT_TOKENS", 1024, minimum=1)
# Off behind a transaction-mode pooler that cannot carry prepared statements (PgBouncer before 1.21).
LLM_GATEWAY_PREPARED_STATEMENTS = env_bool("LLM_GATEWAY_PREPARED_STATEMENTS", True)
# Re-derive and republish changed device policies (new devices, devices moved between groups).
POLICY_RECONCILE_SECONDS = env_int("POLICY_RECONCILE_SECONDS", 900, minimum=60)
CELERY_BEAT_SCHEDULE["policies-reconcile"] = {
    "task": "policies.tasks.reconcile_policies",
    "schedule": POLICY_RECONCILE_SECONDS,
}

# Model updates (ota): artifact size cap, metadata lifetimes, periodic work (docs/updates.md).
OTA_MAX_ARTIFACT_BYTES = env_int("OTA_MAX_ARTIFACT_BYTES", 2 * 1024**3, minimum=1)
OTA_ROOT_EXPIRY_DAYS = env_int("OTA_ROOT_EXPIRY_DAYS", 365, minimum=1)
OTA_TARGETS_EXPIRY_DAYS = env_int("OTA_TARGETS_EXPIRY_DAYS", 30, minimum=1)
OTA_TIMESTAMP_EXPIRY_HOURS = env_int("OTA_TIMESTAMP_EXPIRY_HOURS", 24, minimum=1)
OTA_DIRECTOR_EXPIRY_HOURS = env_int("OTA_DIRECTOR_EXPIRY_HOURS", 168, minimum=2)
# How often the rollout gates are evaluated (seconds).
OTA_GATE_TICK_SECONDS = env_int("OTA_GATE_TICK_SECONDS", 60, minimum=1)
CELERY_BEAT_SCHEDULE.update(
    {
        "ota-rollout-gates": {"task": "ota.tasks.rollout_gates_tick", "schedule": OTA_GATE_TICK_SECONDS},
        "ota-rollout-sync-targets": {"task": "ota.tasks.rollout_sync_targets", "schedule": 600.0},
        "ota-timestamp-refresh": {"task": "ota.tasks.timestamp_refresh", "schedule": 3600.0},
    }
)
