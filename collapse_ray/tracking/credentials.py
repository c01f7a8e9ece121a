"""Credentials in a tracking URI: split off, redacted wherever the URI is shown, scrubbed
from quoted driver errors, and moved into the environment so that nothing logged,
printed or stored holds them (the client takes them back: store.with_credentials)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote

from collapse_ray.environment import environment_restored
from collapse_ray.validation import SpecError

# userinfo as SQLAlchemy reads it: the user up to ':' (no '/'), the password up to the
# first '@', so a raw '#', '/' or '?' in it stays in the password (urlsplit would end the
# authority there and see no password at all)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?:(?P<user>[^:/@]*)(?::(?P<password>[^@]*))?@)?(?P<rest>.*)",
                       re.DOTALL)
# query parameters that carry credentials (libpq's password/sslpassword, tokens, keys)
_SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token|auth|credential|api[_-]?key|signature|^sig$|^key$",
                               re.IGNORECASE)
MIN_SCRUBBED = 4  # shorter credentials are not searched for in text (they match by chance)
_SECRETS: set[str] = set()  # every credential seen in a tracking URI, scrubbed from messages


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(URI without user:password@, user, password), userinfo as written (not decoded)."""
    match = _USERINFO.fullmatch(uri)
    if match is None or match["user"] is None:
        return uri, None, None
    return match["scheme"] + match["rest"], match["user"], match["password"]


def _query_secrets(uri: str) -> list[tuple[int, int]]:
    """(start, end) of each credential-carrying query parameter's value."""
    spans = []
    if "?" not in uri:
        return spans
    offset = uri.index("?") + 1
    for pair in re.finditer(r"[^&;#]+", uri[offset:]):
        name, equals, _ = pair.group().partition("=")
        if equals and _SECRET_PARAMETER.search(unquote(name)):
            spans.append((offset + pair.start() + len(name) + 1, offset + pair.end()))
    return spans


def uri_secrets(uri: str) -> set[str]:
    """The credentials in a URI (password, secret query values), as written and decoded."""
    public, _, password = split_credentials(uri)
    found = {password} if password else set()
    found |= {public[a:b] for a, b in _query_secrets(public)}
    return {form for value in found for form in (value, unquote(value)) if form and form != "***"}


def redact_uri(uri: str) -> str:
    """The URI with every credential (password, secret query values) replaced by ***."""
    _SECRETS.update(uri_secrets(uri))
    public, user, password = split_credentials(uri)
    if password is not None:
        scheme, rest = public.split("://", 1)
        uri = f"{scheme}://{user}:***@{rest}"
    for a, b in reversed(_query_secrets(uri)):
        uri = uri[:a] + "***" + uri[b:]
    return uri


def scrub(text: str) -> str:
    """`text` with every credential seen in a tracking URI replaced by *** (for messages
    that quote a driver's error, which may quote the URL)."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if len(secret) >= MIN_SCRUBBED:  # a 1-3 character password would blank out words
            text = text.replace(secret, "***")
    return text


def refuse_if_secret_in(uri: str, **written: str) -> None:
    """Refuse to start when a credential would end up in something the sweep writes
    (its folder's name, the spec, a URI that could not be redacted)."""
    secrets = uri_secrets(uri)
    for what, text in written.items():
        if any(len(secret) >= MIN_SCRUBBED and secret in text for secret in secrets):
            raise SpecError(f"refusing to start: a credential of the tracking URI would be written into the {what}; "
                            "pass it in the environment instead (MLFLOW_TRACKING_PASSWORD, PGPASSWORD)")


def credentials_to_environment(uri: str) -> str:
    """Keep credentials out of everything that is logged, printed or stored (Tune's
    trial configs, sweep.json): returns the URI to pass around instead.

    http(s): user:password moves to MLFLOW_TRACKING_USERNAME / _PASSWORD, MLflow's own
    variables. A database URL needs its credentials in the URL (userinfo or query
    parameters such as password=), so the full URL goes to MLFLOW_TRACKING_URI and a
    redacted one is passed around; `client_for` swaps it back.
    Workers of the embedded Ray inherit these variables; on a cluster, set them on the
    nodes (cluster/README.md, Secrets).
    """
    public, user, password = split_credentials(uri)
    if user is not None and uri.startswith(("http://", "https://")):
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(user)
        if password is not None:
            _SECRETS.update(uri_secrets(uri))
            os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
        uri = public
    shown = redact_uri(uri)
    if shown == uri:
        return uri
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return shown


CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI")


@contextmanager
def credentials_in_environment(uri: str) -> Iterator[str]:
    """credentials_to_environment for the duration of the block, then the environment
    as it was (a library call must not leave credentials behind)."""
    with environment_restored(CREDENTIAL_VARIABLES):
        yield credentials_to_environment(uri)
