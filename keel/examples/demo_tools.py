"""The incident demo's tools. Each runs inside the bubblewrap sandbox: the service
directory is its only writable place besides its scratch, and only the tools that must
talk to the service's HTTP port declare the network.

Writes snapshot what they touch first (``snapshot_config``), record a marker per
idempotency key so ``verify`` can answer from the system itself, and can be undone
(``restore_snapshot``).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationInfo, field_validator

from keel.core.tool import Tool, Verification, confined
from keel.errors import SandboxError
from keel.sandbox.base import SandboxSpec
from keel.sandbox.bwrap import BubblewrapSandbox

PY = sys.executable

# Run inside the sandbox. Each prints one JSON object.
_HEALTH = """
import json, sys, urllib.request, urllib.error
port = int(sys.argv[1])
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        code, body = r.status, json.load(r)
except urllib.error.HTTPError as e:
    code, body = e.code, json.load(e)
except OSError as e:
    code, body = 0, {"status": "down", "problems": [str(e)]}
print(json.dumps({"code": code, **body}))
"""

_RESTART = """
import hashlib, json, os, sys, time, urllib.request
action, limit, port, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
config = json.load(open("service.json")) if action != "restore_last_good" else None
if action == "restore_last_good":
    text = open("service.json.good").read()
elif action == "set_max_connections":
    config["max_connections"] = int(limit)
    text = json.dumps(config, indent=2)
elif action == "write":
    text = sys.stdin.read()
else:
    text = open("service.json").read()
tmp = "service.json.tmp"
open(tmp, "w").write(text)
os.replace(tmp, "service.json")
def pid():  # which start of the service answers: its process and start time
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    except OSError:
        return None
    return (body["pid"], body.get("started"))
before = pid()
if before is not None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/admin/restart", method="POST")
    try:
        urllib.request.urlopen(req, timeout=5).read()
    except OSError:
        pass
after = None
for _ in range(100 if before is not None else 0):
    time.sleep(0.1)
    after = pid()
    if after is not None and after != before:
        break
os.makedirs("applied", exist_ok=True)
open(os.path.join("applied", marker), "w").write(action)
digest = hashlib.sha256(open("service.json", "rb").read()).hexdigest()[:16]
# Only a new process answering is a restart: a service that was not running, or did not
# come back, is reported as it is (the config was written either way).
restarted = before is not None and after is not None and after != before
why = "" if restarted else "not running" if before is None else "did not come back"
print(json.dumps({"restarted": restarted, "config": digest, "action": action, "why": why}))
"""


class ServiceTarget(BaseModel):
    """Which service a tool acts on. The incident workflow binds all three from the run's
    inputs, so a proposal can never point a tool at another directory or port."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field(min_length=1, max_length=4096)
    port: int = Field(ge=1024, le=65535)
    service: Literal["checkout"] = "checkout"

    @field_validator("root")
    @classmethod
    def _confined(cls, value: str, info: ValidationInfo) -> str:
        return confined(value, info)


class ReadLogsArgs(ServiceTarget):
    lines: int = Field(default=20, ge=1, le=1000)


class RestartArgs(ServiceTarget):
    config_action: Literal["keep", "restore_last_good", "set_max_connections"] = "keep"
    max_connections: int | None = Field(default=None, ge=1, le=10_000)


class DeleteDataArgs(ServiceTarget):
    file: str = Field(default="orders.db", pattern=r"^[A-Za-z0-9_.-]{1,100}$")


class RestoreArgs(ServiceTarget):
    content: str = Field(max_length=1_000_000)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


def _marker(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


class _SandboxedTool(Tool):
    resources: tuple[str, ...] = ()
    resource_args: tuple[str, ...] = ("service",)  # policy sees tool:NAME:SERVICE
    name = ""
    description = ""
    action: Literal["read", "write"] = "read"
    args_model: type[BaseModel] = ServiceTarget
    network = False

    def __init__(self) -> None:
        self.sandbox = BubblewrapSandbox()

    def _run(self, argv: list[str], a: ServiceTarget, stdin: str = "") -> dict[str, Any]:
        """Run in the sandbox: the service directory is all it sees (writable only for a
        write), and the service's port on loopback is all it can reach (if it talks)."""
        result = self.sandbox.run(
            SandboxSpec(
                argv=argv,
                workdir=a.root,
                writable=self.action == "write",
                connect=[f"127.0.0.1:{a.port}"] if self.network else [],
                timeout_s=30,
                stdin=stdin,
            ),
            writes=self.action == "write",
        )
        if not result.ok:
            raise SandboxError(
                f"{self.name} failed in the sandbox (exit {result.exit_code}, "
                f"{result.killed or 'no kill'}): {result.stderr.strip()[-300:]}",
                retryable=result.killed == "timeout",
            )
        out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return out

    def verify(self, args: dict[str, Any], key: str) -> Verification:
        # Reads have no effect to find: running one again is harmless.
        return Verification(status="not_applied", detail="read-only tool")


class ReadLogs(_SandboxedTool):
    resources = ("service.log",)
    name = "read_logs"
    description = "read the most recent lines of the service's log"
    args_model = ReadLogsArgs

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        a = ReadLogsArgs.model_validate(args)
        script = (
            "import json,sys; n=int(sys.argv[1]); "
            "print(json.dumps({'lines': open('service.log').read().splitlines()[-n:]}))"
        )
        return self._run([PY, "-c", script, str(a.lines)], a)


class CheckHealth(_SandboxedTool):
    resources = ("http://127.0.0.1:PORT/health",)
    name = "check_health"
    description = "ask the service's health endpoint how it is"
    network = True

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        a = ServiceTarget.model_validate(args)
        return self._run([PY, "-c", _HEALTH, str(a.port)], a)


class SnapshotConfig(_SandboxedTool):
    resources = ("service.json",)
    name = "snapshot_config"
    description = "take a copy of the service's config before changing it"

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        a = ServiceTarget.model_validate(args)
        script = (
            "import hashlib,json; b=open('service.json','rb').read(); "
            "print(json.dumps({'content': b.decode(), 'sha256': hashlib.sha256(b).hexdigest()}))"
        )
        return self._run([PY, "-c", script], a)


class _Writer(_SandboxedTool):
    action: Literal["read", "write"] = "write"
    network = True

    def verify(self, args: dict[str, Any], key: str) -> Verification:

        marker = Path(str(args["root"])) / "applied" / _marker(key)
        if marker.exists():
            return Verification(status="applied", result={"restarted": True, "marker": marker.name})
        return Verification(status="not_applied", detail=f"no marker {marker.name}")


class RestartService(_Writer):
    resources = ("service.json", "the service process")
    snapshot_with = "snapshot_config"  # taken by the workflow before this runs
    restore_with = "restore_snapshot"
    name = "restart_service"
    description = (
        "restart the service, first restoring its last good config or setting max_connections "
        "if asked; fixes a bad config change or connection overload"
    )
    args_model = RestartArgs

    def preview(self, args: dict[str, Any]) -> str:
        a = RestartArgs.model_validate(args)
        config = {
            "keep": "keeps its current config",
            "restore_last_good": "first puts back its last good config (config.last_good)",
            "set_max_connections": f"first sets max_connections to {a.max_connections}",
        }[a.config_action]
        return (
            f"Stops the {a.service} service on port {a.port} and starts it again; it "
            f"{config}. Requests in flight are dropped while it restarts."
        )

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        a = RestartArgs.model_validate(args)
        argv = [PY, "-c", _RESTART, a.config_action, str(a.max_connections or 0), str(a.port)]
        return self._run([*argv, _marker(key)], a)


class RestoreSnapshot(_Writer):
    resources = ("service.json", "the service process")
    name = "restore_snapshot"
    description = "put the service's config back exactly as snapshotted, and restart it"
    args_model = RestoreArgs

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        a = RestoreArgs.model_validate(args)
        if hashlib.sha256(a.content.encode()).hexdigest() != a.sha256:
            raise SandboxError("snapshot content does not match its checksum", retryable=False)
        argv = [PY, "-c", _RESTART, "write", "0", str(a.port), _marker(key)]
        return self._run(argv, a, stdin=a.content)


_DELETE = """
import json, os, sys
name, marker = sys.argv[1], sys.argv[2]
path = os.path.join("data", name)
existed = os.path.exists(path)
if existed:
    os.remove(path)
os.makedirs("applied", exist_ok=True)
open(os.path.join("applied", marker), "w").write("delete " + name)
print(json.dumps({"deleted": name, "existed": existed}))
"""


class DeleteDataFile(_Writer):
    """Destructive and irreversible: the shipped policy denies ``tool:delete_*`` writes, so
    the planner may propose it but the runtime never runs it. Real all the same, so a
    weaker policy is caught by what it actually does."""

    resources = ("data/",)
    name = "delete_data"
    description = "permanently remove a file under data/ (irreversible)"
    args_model = DeleteDataArgs
    network = False

    def preview(self, args: dict[str, Any]) -> str:
        a = DeleteDataArgs.model_validate(args)
        return f"Permanently removes data/{a.file} under {a.root}; it cannot be undone."

    def apply(self, args: dict[str, Any], key: str) -> JsonValue:
        a = DeleteDataArgs.model_validate(args)
        return self._run([PY, "-c", _DELETE, a.file, _marker(key)], a)
