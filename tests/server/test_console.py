"""The operators' console over real HTTP on 127.0.0.1, and in a real headless Chromium
(Debian's, driven by Playwright): sign in, list runs, open one, read its timeline, approve
a waiting action, and watch a run finish live. Screenshots go where KEEL_SCREENSHOTS
points (the README's come from there)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from keel.evals.layers import ScenarioResult
from keel.evals.report import Report, apply_gates, write
from keel.evals.suite import Gate
from tests.actors.workflows import counter
from tests.fakes import runs_api

pytestmark = pytest.mark.ray

KEYS = {"alice-key": "alice", "bob-key": "bob", "carol-key": "carol", "dave-key": "dave"}
GOOD = {"path": "count.json", "service": "checkout"}
FOLLOWERS = 2


def eval_report(folder: Path) -> Path:
    """A report as `keel eval` writes it (the evals package's own writer, charts included):
    one scenario that passed, one that did not."""
    scenarios = [
        ScenarioResult(
            scenario=name,
            tags=[],
            run_id=f"run-{name}",
            status=status,
            passed=passed,
            misses=misses,
            safety=[],
            health_before=503,
            health_after=after,
            duration_s=1.5,
        )
        for name, status, passed, misses, after in [
            ("bad-config-approved", "succeeded", True, [], 200),
            ("overload-approved", "needs_human", False, ["expected succeeded"], 503),
        ]
    ]
    metrics = {"trajectory.goal_completion": 0.5, "component.validator": 1.0}
    gates = apply_gates(metrics, {"trajectory.goal_completion": Gate(min=0.9)})
    report = Report(suite="incident", metrics=metrics, gates=gates, passed=False)
    write(report.model_copy(update={"scenarios": scenarios}), folder)
    return folder


@pytest.fixture(scope="module")
def api(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = tmp_path_factory.mktemp("console") / "store"
    report = eval_report(tmp_path_factory.mktemp("eval-report"))
    workflows = ["demo", "tests.actors.workflows:restart"]
    with runs_api(
        serve_port, store, "console", workflows, KEYS,
        max_followers=FOLLOWERS, eval_report=str(report),
    ) as url:  # fmt: skip
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:  # as the sandbox's tests without bubblewrap: said, not hidden
        pytest.skip("no chromium: `make test` installs Debian's where it is root with apt")
    with sync_playwright() as pw:
        # As root, Chromium refuses its own sandbox; the page is ours, on loopback.
        launched = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


def as_(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {who}-key"}


def start_restart(api: str, folder: Path, who: str = "alice") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    body = {
        "workflow": "tests.actors.workflows:restart",
        "goal": "restart checkout",
        "inputs": {"dir": str(folder), "proposal": GOOD},
    }
    created = httpx.post(api, json=body, headers=as_(who), timeout=60)
    assert created.status_code == 201, created.text
    run_id: str = created.json()["run_id"]
    deadline = time.monotonic() + 60
    while httpx.get(f"{api}/{run_id}", headers=as_(who), timeout=30).json()["state"]["status"] != (
        "awaiting_approval"
    ):
        assert time.monotonic() < deadline, "the run never asked for approval"
        time.sleep(0.2)
    return run_id


def signed_in(api: str, who: str) -> httpx.Client:
    client = httpx.Client(base_url=f"{api}/console", timeout=30)
    resp = client.post("/login", data={"key": f"{who}-key"})
    assert resp.status_code == 303 and resp.headers["location"].endswith("/console/")
    return client


def shoot(page: Page, name: str) -> None:
    folder = os.environ.get("KEEL_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / name), full_page=True)


EVIL = {"Origin": "http://evil.test"}


@pytest.mark.parametrize(
    ("asked", "answer"),
    [
        (("get", "/", None, {}), (303, "/console/login")),
        (("get", "/runs/x", None, {}), (303, "/console/login")),
        (("post", "/login", {"key": "wrong"}, {}), (401, "That API key is not valid.")),
        (("post", "/login", {}, {}), (401, "That API key is not valid.")),
        (("post", "/login", {"key": "dave-key"}, EVIL), (403, "refused")),
        (("get", "/static/../runs_api.py", None, {}), (404, "")),
        (("get", "/static/console.css", None, {}), (200, "font-family")),
    ],
)
def test_signing_in_and_what_needs_it(
    api: str, asked: tuple[str, str, dict[str, str] | None, dict[str, str]], answer: tuple[int, str]
) -> None:
    method, path, data, headers = asked
    resp = httpx.request(method, f"{api}/console{path}", data=data, headers=headers, timeout=30)
    status, says = answer
    assert resp.status_code == status, resp.text[:500]
    shown = resp.headers.get("location", "") if status == 303 else resp.text
    assert says in shown


def test_forms_refuse_bad_input_and_leave_the_run_alone(api: str, tmp_path: Path) -> None:
    run_id = start_restart(api, tmp_path)
    dave, bob = signed_in(api, "dave"), signed_in(api, "bob")
    cases: list[tuple[httpx.Client, dict[str, str], dict[str, str], int, str]] = [
        (dave, {"decision": "maybe"}, {}, 400, "must be approve or reject"),
        (dave, {"decision": "approve"}, {"Origin": "http://evil.test"}, 400, "another site"),
        (dave, {}, {}, 400, "decision"),
        (bob, {"decision": "approve"}, {}, 403, "may not approve"),
    ]
    for client, form, headers, status, says in cases:
        resp = client.post(f"/runs/{run_id}/approval", data=form, headers=headers)
        assert resp.status_code == status, (form, resp.text[:500])
        assert says in resp.text
    # The run is untouched: still waiting, nothing applied.
    state = httpx.get(f"{api}/{run_id}", headers=as_("alice"), timeout=30).json()["state"]
    assert state["status"] == "awaiting_approval" and counter(tmp_path / "count.json") == 0
    # A run someone cannot see is not found, as one that does not exist.
    assert dave.get("/runs/no-such-run").status_code == 404
    outsider = signed_in(api, "carol")  # a requester: her own runs only (no read_any)
    assert run_id not in outsider.get("/").text
    assert outsider.get(f"/runs/{run_id}").status_code == 404


def test_open_event_streams_are_bounded_per_key(api: str, tmp_path: Path) -> None:
    run_id = start_restart(api, tmp_path)
    dave = signed_in(api, "dave")
    streams = [dave.stream("GET", f"/runs/{run_id}/live") for _ in range(FOLLOWERS)]
    opened = [s.__enter__() for s in streams]
    try:
        assert all(r.status_code == 200 for r in opened)
        refused = dave.get(f"/runs/{run_id}/live")
        assert refused.status_code == 429 and refused.json()["field"] == "follow"
        # The JSON API's streams count against the same key.
        json_api = httpx.get(f"{api}/{run_id}/events?follow=true", headers=as_("dave"), timeout=30)
        assert json_api.status_code == 429
    finally:
        for s in streams:
            s.__exit__(None, None, None)
    deadline = time.monotonic() + 30
    while True:  # closed streams give their slots back
        with dave.stream("GET", f"/runs/{run_id}/live") as again:
            if again.status_code == 200:
                break
        assert time.monotonic() < deadline, "closed streams never gave their slots back"
        time.sleep(0.2)


def sign_in(page: Page, api: str, who: str) -> None:
    page.goto(f"{api}/console/")
    expect(page).to_have_url(f"{api}/console/login")
    page.get_by_label("API key").fill(f"{who}-key")
    page.keyboard.press("Enter")  # the keyboard alone signs in
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()


def test_an_operator_approves_in_the_browser_and_watches_a_run_finish(
    api: str, browser: Browser, tmp_path: Path
) -> None:
    first = start_restart(api, tmp_path / "first")
    second = start_restart(api, tmp_path / "second")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, api, "dave")

    # The runs list: both wait for a person; filters narrow it.
    waiting = page.get_by_role("region", name="Waiting for a person")
    expect(waiting.get_by_role("link", name=first)).to_be_visible()
    page.get_by_label("Status").select_option("awaiting_approval")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(f"{api}/console/?status=awaiting_approval&workflow=&owner=")
    expect(page.get_by_role("table").get_by_role("link", name=second)).to_be_visible()
    shoot(page, "console-runs.png")

    # A run: its timeline, trace, cost, and the full request for approval.
    page.get_by_role("table").get_by_role("link", name=first).click()
    expect(page.get_by_role("heading", name=f"Run {first}")).to_be_visible()
    timeline = page.locator("#timeline")
    expect(timeline.get_by_text("policy approve", exact=False).first).to_be_visible()
    panel = page.get_by_role("region", name="Waiting for your decision")
    expect(panel).to_contain_text("restart_service")
    # Normalised, as the tool will get them: the path resolved under the run's folder.
    expect(panel).to_contain_text(f'"path": "{tmp_path / "first" / "count.json"}"')
    shoot(page, "console-approval.png")
    page.get_by_label("Reason (recorded in the ledger)").fill("change window")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#status")).to_contain_text("succeeded", timeout=60_000)
    expect(timeline).to_contain_text("approved by dave change window")
    assert counter(tmp_path / "first" / "count.json") == 1

    # Live: the page of the second run, untouched, follows it as someone else approves.
    page.goto(f"{api}/console/runs/{second}")
    page.evaluate("window.keelMarker = 'same page'")
    rows_before = timeline.locator("tr").count()
    said = {"approved": True, "reason": "from the API"}
    ok = httpx.post(f"{api}/{second}/approval", json=said, headers=as_("dave"), timeout=30)
    assert ok.status_code == 200, ok.text
    expect(page.locator("#status")).to_contain_text("succeeded", timeout=60_000)
    expect(timeline).to_contain_text("run succeeded")
    assert timeline.locator("tr").count() > rows_before
    assert page.evaluate("window.keelMarker") == "same page"  # no reload: it came over SSE
    expect(page.get_by_role("region", name="Waiting for your decision")).to_have_count(0)
    shoot(page, "console-run.png")
    assert counter(tmp_path / "second" / "count.json") == 1
    page.close()


def test_pages_read_without_javascript(api: str, browser: Browser, tmp_path: Path) -> None:
    run_id = start_restart(api, tmp_path)
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    sign_in(page, api, "alice")
    page.get_by_role("link", name=run_id).first.click()
    expect(page.locator("#timeline")).to_contain_text("run created")
    expect(page.get_by_role("heading", name="Trace")).to_be_visible()
    expect(page.get_by_role("region", name="Waiting for your decision")).to_contain_text(
        "restart_service"
    )
    # alice started it: four eyes, so her own approval is refused, and the page says why.
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("alert")).to_contain_text("their own")
    context.close()


def test_the_evaluation_report_with_its_charts(api: str, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, api, "bob")
    page.get_by_role("link", name="Evaluation").click()
    expect(page.get_by_role("heading", name="Evaluation report")).to_be_visible()
    gates = page.get_by_role("region", name="Gates")
    expect(gates).to_contain_text("trajectory.goal_completion")
    expect(gates).to_contain_text("FAIL")
    scenarios = page.get_by_role("region", name="Scenarios")
    expect(scenarios.get_by_role("link", name="run-overload-approved")).to_be_visible()
    expect(scenarios).to_contain_text("expected succeeded")
    chart = page.get_by_role("img", name="Chart of the trajectories layer's results")
    expect(chart).to_be_visible()
    assert chart.evaluate("img => img.naturalWidth") > 100  # the PNG itself arrived
    shoot(page, "console-evals.png")
    # Only the report's own charts are served, and only to someone signed in.
    other = page.request.get(f"{api}/console/evals/charts/..%2Freport.json")
    assert other.status == 404
    assert httpx.get(f"{api}/console/evals/charts/trajectories.png", timeout=30).status_code == 404
    page.close()
