"""Credentials in tracking URIs: kept out of everything the harness prints or records.

A team server behind MLflow's basic-auth app takes a user and password from `MLFLOW_TRACKING_USERNAME`
and `MLFLOW_TRACKING_PASSWORD`; a URI such as `http://user:secret@host:5000` works too, but MLflow
quotes the URL in its error messages, and the harness prints the store's URI and records its config.
So a server URI's credentials are moved into those variables and the URI is kept without them, and
whatever the harness writes into a run (params, tags, texts, errors) has any `scheme://user:pass@` left
in it redacted.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit, urlunsplit

# scheme://userinfo@ : the userinfo (user, or user:password) of any URI inside a text.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s'\"]+@")


def redact(text: str) -> str:
    """`text` with the credentials of every URI in it replaced by `***`.

    >>> redact("store http://alice:s3cret@mlflow.lan:5000 and postgresql://u:p@db/x; plain http://host/")
    'store http://***@mlflow.lan:5000 and postgresql://***@db/x; plain http://host/'
    """
    return _USERINFO.sub(lambda m: m["scheme"] + "***@", text)


def adopt_credentials(uri: str) -> str:
    """An http(s) tracking URI without its credentials, which go to MLflow's basic-auth variables.

    A database URI keeps its own (its driver needs them in the URI; only `redact` hides them).
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or (parts.username is None and parts.password is None):
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
    if parts.password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
