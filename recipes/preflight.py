"""Fail fast on a tracking server that is not there, before any data is read or any step is trained.

MLflow's REST client retries a refused connection with exponential back-off for minutes
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``); a typo in ``--tracking-uri`` should instead be one line naming the
URI within seconds.  So an ``http(s)://`` tracking URI is probed once (``GET <uri>/health``, what
``mlflow server`` answers) with a short timeout.  Any HTTP answer counts as reachable (a proxy or an
authenticating gateway may answer 401/404 there); only a refused, unresolvable or silent host fails.
"""
from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 5.0


class TrackingUnreachable(RuntimeError):
    """The tracking server named by the URI does not answer; ``str()`` is one line naming the URI."""


def check_tracking_uri(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise ``TrackingUnreachable`` if ``uri`` is an HTTP(S) tracking server that does not answer."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return  # sqlite:///, file:, databricks: nothing to probe over the network
    if not parsed.hostname:
        raise TrackingUnreachable(f"tracking URI {uri!r} names no host")
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # something answered: let MLflow report auth or path problems itself
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnreachable(f"tracking server {uri} is unreachable ({reason}); start it (mlflow server ...) "
                                  "or leave out --tracking-uri to use the local SQLite store") from None
