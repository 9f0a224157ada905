"""Who is acting, for the command line: a claim is never enough.

The CLI principal is the operating-system user, mapped to a principal in ``cli.users``
(with no mapping at all, the single-user embedded default, everyone is ``local``), or the
principal of an API key given in ``KEEL_API_KEY`` (hashed, looked up in ``api.keys``).
``--as OTHER`` is honoured only where policy lets that principal act as the other
(``act_as`` on ``principal:OTHER``).
"""

from __future__ import annotations

import getpass
import hashlib
import os

from keel.config import KeelConfig
from keel.errors import InputError, PolicyError
from keel.policy.engine import PolicyEngine

LOCAL = "local"


def own_principal(config: KeelConfig, env: dict[str, str] | None = None) -> str:
    """The principal this process acts as before any ``--as``.

    Raises:
        InputError: the API key is unknown, or the OS user is not mapped.
    """
    env = dict(os.environ if env is None else env)
    key = env.get("KEEL_API_KEY")
    if key:
        principal = config.api.keys.get(hashlib.sha256(key.encode()).hexdigest())
        if principal is None:
            raise InputError("KEEL_API_KEY is not a key in api.keys", field="KEEL_API_KEY")
        return principal
    if not config.cli.users:
        return LOCAL
    user = getpass.getuser()
    principal = config.cli.users.get(user)
    if principal is None:
        raise InputError(
            f"operating-system user {user!r} has no principal in cli.users", field="cli.users"
        )
    return principal


def acting_principal(
    config: KeelConfig, requested: str | None, env: dict[str, str] | None = None
) -> str:
    """The principal a command acts as: its own, or ``requested`` where policy lets it.

    Raises:
        PolicyError: naming ``--as``, when this user may not act as ``requested``.
    """
    own = own_principal(config, env)
    if requested is None or requested == own:
        return own
    decision = PolicyEngine(config.policy.model, config.policy.policy).decide(
        own, f"principal:{requested}", "act_as"
    )
    if decision.effect != "allow":
        raise PolicyError(f"{own} may not act as {requested}", field="--as")
    return requested
