"""HTTP and websockets on one ASGI application, served by Daphne."""

import asyncio
import gc
import logging
import os
import sys
import threading

from django.conf import settings
from django.core.asgi import get_asgi_application
from django.urls import re_path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# Django must be set up before anything imports models (routing -> consumers -> models).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chatsite.celery import beat_embedded_start  # noqa: E402
from chatsite.health import static_files_missing  # noqa: E402
from chatsite.middleware import BodySizeLimitMiddleware, SiteOriginValidator  # noqa: E402
from conversations.llm import warm_up  # noqa: E402
from conversations.routing import websocket_urlpatterns  # noqa: E402


def warm_up_and_freeze() -> None:
    """Importing the provider SDKs and loading the token encoding takes seconds: done beside
    startup, not inside the first person's chat turn. Then what startup made (modules, Django's
    registries, the SDKs, the encodings: ~290,000 objects) is frozen, as it lives as long as the
    process: a full garbage collection no longer walks it. Every frame in flight waits out such a
    collection; at 200 streams they took 150-210 ms each, and 20-55 ms with the heap frozen
    (BENCHMARKS.md, "Chat streaming")."""
    warm_up()
    gc.collect()  # what is garbage now is not frozen with the rest
    gc.freeze()


# After the replies ended at shutdown publish their last frames: the time those take through the
# channel layer (Redis) to the sockets of this process, before Daphne ends the sockets.
SHUTDOWN_LAST_FRAMES_SECONDS = 0.5


def replies_end_at_shutdown() -> None:
    """Under Daphne, SIGTERM (a deploy, `docker compose restart`) stops the reactor: the replies
    running here would die with the process, to be reaped as errors minutes later. Before the
    reactor stops, they get a few seconds to end, and the rest are ended as interrupted (saved,
    billed, settled, their sockets told): turns.replies_shutdown. Daphne installs its reactor
    before it loads this module; elsewhere (Celery, tests) this changes nothing.

    Daphne's own shutdown step (Server.kill_all_applications) cancels every socket's consumer
    at once: run beside it, the replies went on for their grace period with no socket to relay
    them (on Redis the tabs heard nothing more, their reply frozen, then dropped). So it runs
    after the replies have ended and their last frames have gone out."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return
    from daphne.server import Server
    from twisted.internet import defer

    from conversations import turns

    kill_sockets = Server.kill_all_applications
    if getattr(kill_sockets, "after_replies", False):
        return

    async def replies_end() -> None:
        if await turns.replies_shutdown():
            await asyncio.sleep(SHUTDOWN_LAST_FRAMES_SECONDS)

    def replies_end_then_kill_sockets(server):
        ended = defer.Deferred.fromFuture(asyncio.ensure_future(replies_end()))
        ended.addErrback(lambda failure: logging.getLogger("chatsite").error("ending replies at shutdown failed: %s", failure.value))
        ended.addCallback(lambda _: kill_sockets(server))
        return ended

    replies_end_then_kill_sockets.after_replies = True
    # Daphne registers the bound method as a shutdown trigger in Server.run(), after it has
    # loaded this module: the replacement is the one it registers.
    Server.kill_all_applications = replies_end_then_kill_sockets


def static_files_check() -> None:
    """Says at startup, in one line, what /readyz then reports as "static": without the files
    collectstatic writes, every page of this process answers 500."""
    if static_files_missing():
        logging.getLogger("chatsite").error(
            "static files are not collected (no manifest in %s): every page will answer 500 until "
            "`python manage.py collectstatic --noinput` has run and this process is restarted",
            settings.STATIC_ROOT,
        )


def default_model_check() -> None:
    """Says at startup, in one line, when DEFAULT_MODEL has no price in force: every new chat
    starts on it, and each of its messages would be refused (model_unavailable). Settings check
    its form only, before there is a database to ask; here there is one (when it answers: a
    database that does not is /readyz's to report)."""
    from django.core.exceptions import ValidationError

    from accounts.services import default_model_check as model_usable_as_default

    try:
        model_usable_as_default(model_id=settings.DEFAULT_MODEL)
    except ValidationError:
        logging.getLogger("chatsite").error(
            "DEFAULT_MODEL %s has no price (or its price is disabled): every new chat would be refused; "
            "set one with `python manage.py set_price --model %s --input USD --output USD`, or set DEFAULT_MODEL "
            "to a priced model",
            settings.DEFAULT_MODEL,
            settings.DEFAULT_MODEL,
        )
    except Exception:  # noqa: BLE001 - not migrated or not reachable yet: nothing to say about prices
        return


replies_end_at_shutdown()
static_files_check()
default_model_check()
threading.Thread(target=warm_up_and_freeze, name="llm-warm-up", daemon=True).start()
if settings.CELERY_BEAT_EMBEDDED:
    beat_embedded_start()

async def refuse_unrouted_websocket(scope, receive, send) -> None:
    """Last websocket route: a path no route serves is refused like any bad handshake. Channels'
    router would raise ValueError instead, which Daphne logs as an ERROR with its traceback: any
    visitor could fill the error log with them."""
    if (await receive())["type"] == "websocket.connect":  # the first message of every socket
        await send({"type": "websocket.close"})


application = ProtocolTypeRouter(
    {
        # Oversized bodies are refused before Django spools them.
        "http": BodySizeLimitMiddleware(django_asgi_app),
        # In place of Channels' AllowedHostsOriginValidator, which lets a page on any port of an
        # allowed host in: the Origin must be the site's own, scheme and port included.
        "websocket": SiteOriginValidator(AuthMiddlewareStack(URLRouter([*websocket_urlpatterns, re_path(r"", refuse_unrouted_websocket)]))),
    }
)
