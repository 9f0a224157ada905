"""Policy decisions from the Casbin model and policy files, reloaded when they change.

Every decision names the rule that matched and the policy version (a digest of both
files), so the ledger can say exactly why an action was allowed, refused or held for a
person.

Fail-safe by construction:

- **Writes need a person's approval unless a rule exempts them** (``p3``); ``p2`` holds any
  action for approval explicitly. Losing a line from the policy never lets a write through
  unreviewed: at worst it asks a person.
- **Names are normalised** (Unicode NFKC, lower case) before matching, so ``Delete_Data``
  meets the rule written for ``delete_data``.
- **Reloads are atomic and keep the last good version**: a file that does not load, or that
  is empty or does not end in a newline (a write still in progress, a truncated copy), is refused,
  logged, and the previous policy stays in force.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import unicodedata
from pathlib import Path
from typing import Literal

import casbin
from pydantic import BaseModel, ConfigDict

from keel.errors import ConfigError

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "model.conf"
DEFAULT_POLICY = HERE / "policy.csv"

Effect = Literal["allow", "deny", "approve"]
log = logging.getLogger("keel.policy")


def normalise(name: str) -> str:
    """How names are compared: Unicode NFKC, lower case, no surrounding space."""
    return unicodedata.normalize("NFKC", name).strip().lower()


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    subject: str
    object: str
    action: str
    effect: Effect
    rule: list[str]
    policy_version: str

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"


class PolicyEngine:
    """A Casbin enforcer over two files; ``decide`` rereads them if they changed."""

    def __init__(self, model: str | Path | None = None, policy: str | Path | None = None) -> None:
        self.model_path = Path(model) if model else DEFAULT_MODEL
        self.policy_path = Path(policy) if policy else DEFAULT_POLICY
        self._lock = threading.Lock()
        self._stamp: tuple[float, int, float, int] | None = None
        self.version = ""
        self._enforcer: casbin.Enforcer | None = None
        self._decisions: dict[tuple[str, str, str], Decision] = {}
        self.load_error: str | None = None
        self.reload()

    def _file_stamp(self) -> tuple[float, int, float, int]:
        try:
            m, p = self.model_path.stat(), self.policy_path.stat()
        except OSError as exc:
            raise ConfigError(f"cannot read policy files: {exc}", field="policy") from None
        return (m.st_mtime, m.st_size, p.st_mtime, p.st_size)

    def reload(self) -> bool:
        """Load the files if they changed since the last load; True if they were loaded.

        Raises:
            ConfigError: the files do not load and there is no earlier good version.
        """
        with self._lock:
            stamp = self._file_stamp()
            if stamp == self._stamp and self._enforcer is not None:
                return False
            try:
                model, policy = self.model_path.read_bytes(), self.policy_path.read_bytes()
                if not policy.endswith(b"\n"):
                    raise ValueError(f"{self.policy_path} is empty or does not end in a newline")
                enforcer = casbin.Enforcer(str(self.model_path), str(self.policy_path))
            except Exception as exc:
                if self._enforcer is None:
                    raise ConfigError(f"policy files do not load: {exc}", field="policy") from None
                self._stamp = stamp  # do not retry until the files change again
                self.load_error = str(exc)
                log.error("policy not reloaded, version %s stays in force: %s", self.version, exc)
                return False
            digest = hashlib.sha256(model + b"\0" + policy).hexdigest()[:12]
            self.load_error = None
            self._enforcer, self._stamp, self.version = enforcer, stamp, digest
            self._decisions = {}
            return True

    @staticmethod
    def _approval(
        enforcer: casbin.Enforcer, subject: str, obj: str, action: str, allowed_by: list[str]
    ) -> tuple[Effect, list[str]]:
        """An allowed request: held for a person (``p2``, or any write no ``p3`` exempts),
        or allowed outright."""
        held, held_rule = enforcer.enforce_ex(
            enforcer.new_enforce_context("2"), subject, obj, action
        )
        if held:
            return "approve", ["p2", *held_rule]
        if action == "write":
            exempt, exempt_rule = enforcer.enforce_ex(
                enforcer.new_enforce_context("3"), subject, obj, action
            )
            if exempt:
                return "allow", ["p3", *exempt_rule]
            return "approve", ["default", "write needs approval"]
        return "allow", ["p", *allowed_by]

    def decide(self, subject: str, obj: str, action: str) -> Decision:
        """The decision on one request. Decisions are a pure function of the request and
        the policy files, so each is remembered until the files change."""
        subject, obj, action = normalise(subject), normalise(obj), normalise(action)
        self.reload()
        with self._lock:
            cached = self._decisions.get((subject, obj, action))
            if cached is not None:
                return cached
            enforcer = self._enforcer
            assert enforcer is not None
            allowed, rule = enforcer.enforce_ex(subject, obj, action)
            effect: Effect = "allow" if allowed else "deny"
            if allowed:
                effect, rule = self._approval(enforcer, subject, obj, action, rule)
            elif rule:
                rule = ["p", *rule]
            else:
                rule = ["default", "deny"]  # no rule matched
            decision = Decision(
                subject=subject,
                object=obj,
                action=action,
                effect=effect,
                rule=[str(r) for r in rule],
                policy_version=self.version,
            )
            if len(self._decisions) >= 10_000:
                self._decisions.clear()
            self._decisions[(subject, obj, action)] = decision
            return decision
