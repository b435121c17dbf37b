"""Keep secrets out of log lines: tokens in URLs, query strings, headers and messages."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: Query parameters and header names whose values are secrets.
SECRET_KEYS = frozenset(
    {
        "token",
        "access_token",
        "auth",
        "authorization",
        "api_key",
        "apikey",
        "key",
        "password",
        "secret",
        "marimo-server-token",
    }
)
MASK = "***"

# A secret key, also inside a longer name: auth_token, refresh_token, x-api-key.
_KEY = (
    r"[\w-]*?(?:"
    + "|".join(
        re.escape(k) for k in sorted(SECRET_KEYS | {"api-key", "passwd"}, key=len, reverse=True)
    )
    + r")"
)
# key=value, key: value, "key": "value", and reprs such as ('key', b'value').
_PAIR = re.compile(
    r"(?i)\b(" + _KEY + r")"
    + r"(=|:\s*|[\"']\s*:\s*b?[\"']|[\"']\s*,\s*b?[\"'])"
    + r"((?:Bearer|Basic|Token)\s+)?([^\s&\"',;]+)"
)
_KEY_RE = re.compile(r"(?i)" + _KEY)


def _is_secret_key(key: str) -> bool:
    return _KEY_RE.fullmatch(key) is not None
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/@\s:]+):([^/@\s]+)@")


def redact_url(url: str) -> str:
    """The URL with passwords and secret query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = urlencode(
        [
            (k, MASK if _is_secret_key(k) else redact(v))
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str) -> str:
    """Mask anything in free text that looks like ``token=...``, a bearer value or URL password."""
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:{MASK}@", text)
    return _PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}{MASK}", text)


def describe(cause: BaseException | str) -> str:
    """A short description of a failure cause, for a log line or an error message."""
    if isinstance(cause, str):
        return cause
    text = str(cause)
    name = type(cause).__name__
    return f"{name}: {text}" if text else name
