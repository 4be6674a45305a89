"""Log in to a REST gateway: answer a signed challenge, get a short-lived access token.

For tools that talk HTTPS and JSON rather than gRPC (``curl``, a reporting
job, a browser's script): the token goes in ``Authorization: Bearer ...``.
The signer is the same as for transactions (a key file or an HSM key), so no
password exists anywhere. Uses only the standard library's HTTPS client.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from kyodo.client.errors import KyodoError, Unauthenticated, Unavailable
from kyodo.crypto import Signer
from kyodo.wire import login_message

__all__ = ["AccessToken", "rest_call", "rest_login"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessToken:
    """A bearer token and what it is bound to."""

    token: str
    expires_at_ms: int
    identity: str


def rest_call(
    base_url: str,
    method: str,
    path: str,
    *,
    ca_bundle: bytes,
    body: Any = None,
    token: str | None = None,
    timeout_s: float = 10.0,
) -> Any:
    """One JSON call; a problem+json refusal raises KyodoError with its ``code``."""
    context = ssl.create_default_context(cadata=ca_bundle.decode())
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - https only, below
        base_url.rstrip("/") + path, data=data, headers=headers, method=method
    )
    if not request.full_url.startswith("https://"):
        raise KyodoError(f"{base_url} is not an https:// address", code="usage")
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout_s) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            problem = json.loads(exc.read())
        except ValueError:
            problem = {}
        code = str(problem.get("code", "error"))
        message = str(problem.get("detail", exc.reason))
        kind = Unauthenticated if code.startswith("auth.") else KyodoError
        raise kind(message, code=code) from None
    except (urllib.error.URLError, OSError) as exc:
        raise Unavailable(f"gateway unavailable: {exc}", code="unavailable") from None


def rest_login(
    base_url: str, *, certificate_pem: bytes, signer: Signer, ca_bundle: bytes
) -> AccessToken:
    """Log in as the holder of ``signer``'s key, whose certificate is ``certificate_pem``."""
    challenge = rest_call(
        base_url,
        "POST",
        "/v1/auth/challenge",
        ca_bundle=ca_bundle,
        body={"certificate": certificate_pem.decode()},
    )
    nonce = base64.b64decode(challenge["challenge"])
    signature = signer.sign(login_message(challenge["chain_id"], nonce))
    issued = rest_call(
        base_url,
        "POST",
        "/v1/auth/token",
        ca_bundle=ca_bundle,
        body={
            "challenge": challenge["challenge"],
            "signature": base64.b64encode(signature).decode(),
        },
    )
    return AccessToken(
        token=issued["access_token"],
        expires_at_ms=issued["expires_at_ms"],
        identity=issued["identity"],
    )
