"""HTTP and websockets on one ASGI application, served by Daphne."""

import os
import threading

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# Django must be set up before anything imports models (routing -> consumers -> models).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from chatsite.middleware import BodySizeLimitMiddleware  # noqa: E402
from conversations.llm import warm_up  # noqa: E402
from conversations.routing import websocket_urlpatterns  # noqa: E402

# Importing the provider SDKs and loading the token encoding takes seconds; do it beside
# startup, not inside the first person's chat turn.
threading.Thread(target=warm_up, name="llm-warm-up", daemon=True).start()

application = ProtocolTypeRouter(
    {
        # Oversized bodies are refused before Django spools them.
        "http": BodySizeLimitMiddleware(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
