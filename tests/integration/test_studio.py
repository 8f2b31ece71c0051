"""``dualdb studio`` in a real headless Chromium, against a seeded SQLite and a seeded Postgres.

The studio runs in-process (uvicorn in a thread, :func:`dualdb.studio.running`) on a free
127.0.0.1 port over the test's database; Playwright drives Debian's Chromium
(``/usr/bin/chromium``, never a downloaded browser).  Every outcome is checked in the
database through the DAL, not only on the page.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

import dualdb
from dualdb import Database
from dualdb.seed import PROJECT_NAME, seed, seed_id
from dualdb.studio import running
from dualdb.studio.formatting import utc

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
#: Playwright's default is 30 s; a page of this local studio loads in well under a second.
TIMEOUT_MS = 10_000

PROJECT = seed_id("project")
KEYFRAME_1 = seed_id("task:keyframe-1")
KEYFRAME_2 = seed_id("task:keyframe-2")
STITCH = seed_id("task:stitch")
OPENING = seed_id("shot:Opening")


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """One headless Debian Chromium for the whole run (each test gets its own context)."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(f"CI requires Chromium, but {reason}", pytrace=False)
        pytest.skip(reason)
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def db(migrated_url: str) -> Iterator[Database]:
    """The backend's database at head, with the seed's demo data."""
    database = dualdb.connect(migrated_url)
    seed(database, allow_remote=True)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def studio(db: Database) -> Iterator[str]:
    """URL of a read-write studio over ``db``."""
    with running(db, read_only=False) as url:
        yield url


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def column(page: Page, n: int) -> list[str]:
    """The text of data column ``n`` (1 = the first after the checkbox and the icons)."""
    return [
        t.strip() for t in page.locator(f"table tbody tr td:nth-child({n + 2})").all_inner_texts()
    ]


def expect_field_error(page: Page, name: str, text: str) -> None:
    """Form field ``name`` is marked invalid, with ``text`` in the error shown under it."""
    expect(page.locator(f"[name='{name}'].is-invalid")).to_be_visible()
    expect(page.locator(f"[name='{name}'] ~ .invalid-feedback")).to_contain_text(text)


# --- browsing --------------------------------------------------------------------------------


def test_index_lists_every_table_with_its_row_count(
    page: Page, studio: str, db: Database, backend: str
) -> None:
    page.goto(studio)
    expect(page).to_have_url(f"{studio}studio/")
    expect(page.get_by_test_id("backend")).to_have_text(backend)
    expect(page.get_by_test_id("mode")).to_have_text("read-write")
    counts = db.row_counts()
    assert set(counts) == {
        "users",
        "projects",
        "tasks",
        "task_dependencies",
        "generations",
        "shots",
        "shot_generations",
    }
    for table, rows in counts.items():
        row = page.locator(f"#studio-tables tr[data-table='{table}']")
        expect(row.get_by_test_id("rows")).to_have_text(str(rows))
        # …and the sidebar links every table too.
        expect(
            page.locator("#navbar-menu").get_by_role("link", name=table, exact=True)
        ).to_be_visible()
    assert counts["tasks"] == 3 and counts["shot_generations"] == 2


def test_tasks_table_search_sort_and_pagination(page: Page, studio: str, db: Database) -> None:
    page.goto(studio)
    page.locator("#navbar-menu").get_by_role("link", name="tasks", exact=True).click()
    expect(page).to_have_url(f"{studio}studio/tasks/list")
    # Default order is the DAL's: creation order.
    expect(page.locator("table tbody tr")).to_have_count(3)
    assert column(page, 1) == [str(t.id) for t in db.tasks.list().items]

    page.fill("#search-input", "travel_stitch")
    page.press("#search-input", "Enter")
    expect(page).to_have_url(f"{studio}studio/tasks/list?search=travel_stitch")
    expect(page.locator("table tbody tr")).to_have_count(1)
    assert column(page, 1) == [str(STITCH)]
    # Search also reaches into the JSON params.
    page.fill("#search-input", "DUSK")
    page.press("#search-input", "Enter")
    expect(page).to_have_url(f"{studio}studio/tasks/list?search=DUSK")
    expect(page.locator("table tbody tr")).to_have_count(1)
    assert column(page, 1) == [str(KEYFRAME_2)]

    # Sort by task_type, descending: the stitch first, then the keyframes by id (tie-break).
    page.goto(f"{studio}studio/tasks/list")
    page.locator("table thead").get_by_role("link", name="task_type").click()
    expect(page).to_have_url(f"{studio}studio/tasks/list?sortBy=task_type&sort=asc")
    page.locator("table thead").get_by_role("link", name="task_type").click()
    expect(page).to_have_url(f"{studio}studio/tasks/list?sortBy=task_type&sort=desc")
    keyframes = sorted([str(KEYFRAME_1), str(KEYFRAME_2)])
    assert column(page, 1) == [str(STITCH), *keyframes]

    # Pagination: one row a page, three pages, "next" walks them in order.
    page.goto(f"{studio}studio/tasks/list?pageSize=1")
    expect(page.get_by_text("Showing 1 to 1 of 3 items")).to_be_visible()
    seen = column(page, 1)
    for n in (2, 3):
        page.get_by_role("link", name="next").click()
        expect(page.get_by_text(f"Showing {n} to {n} of 3 items")).to_be_visible()
        seen += column(page, 1)
    assert seen == [str(t.id) for t in db.tasks.list().items]


def test_detail_view_shows_uuid_uuid_list_json_and_utc_timestamps(
    page: Page, studio: str, db: Database
) -> None:
    task = db.tasks.get(KEYFRAME_2)
    page.goto(f"{studio}studio/tasks/details/{task.id}")
    row = page.locator("table tbody tr", has=page.locator("td", has_text="dependant_on"))
    # uuid[]: each element a link to that task.
    link = row.get_by_role("link", name=str(KEYFRAME_1))
    expect(link).to_have_attribute("href", f"{studio}studio/tasks/details/{KEYFRAME_1}")
    # jsonb: pretty-printed JSON.
    params = page.locator("table tbody tr", has=page.locator("td", has_text="params")).locator(
        "pre"
    )
    expect(params).to_contain_text('"prompt": "the same lighthouse at dusk"')
    # timestamptz: in UTC, to the microsecond.
    created = page.locator("table tbody tr", has=page.locator("td", has_text="created_at"))
    expect(created.locator("td").nth(1)).to_have_text(utc(task.created_at))
    assert utc(task.created_at).endswith(" UTC")
    # SQL NULL is shown as such.
    worker = page.locator("table tbody tr", has=page.locator("td", has_text="worker_id"))
    expect(worker.locator("td").nth(1)).to_have_text("NULL")
    # The project id links to the project.
    page.get_by_role("link", name=str(PROJECT)).click()
    expect(page.get_by_text(PROJECT_NAME).first).to_be_visible()


# --- editing ---------------------------------------------------------------------------------


def test_edit_a_project_name_and_see_it_persisted(page: Page, studio: str, db: Database) -> None:
    assert db.projects.get(PROJECT).updated_at is None
    page.goto(f"{studio}studio/projects/list")
    page.locator(f"a[href$='/studio/projects/edit/{PROJECT}']").click()
    expect(page.locator("[name='name']")).to_have_value(PROJECT_NAME)
    page.fill("[name='name']", "  Renamed in the studio  ")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page).to_have_url(f"{studio}studio/projects/list")
    expect(page.locator("table tbody")).to_contain_text("Renamed in the studio")

    project = db.projects.get(PROJECT)
    # Trimmed and stamped exactly as ProjectsRepository.update does.
    assert project.name == "Renamed in the studio"
    assert project.updated_at is not None


def test_invalid_json_is_a_form_error_and_nothing_is_written(
    page: Page, studio: str, db: Database
) -> None:
    before = db.tasks.get(KEYFRAME_1)
    page.goto(f"{studio}studio/tasks/edit/{KEYFRAME_1}")
    page.fill("[name='params']", '{"prompt": "a lighthouse at night",')
    page.get_by_role("button", name="Save", exact=True).click()
    expect_field_error(page, "params", "invalid JSON: Expecting property name")
    expect_field_error(page, "params", "(line 1, column")
    # What was typed is kept, to be fixed.
    expect(page.locator("[name='params']")).to_have_value('{"prompt": "a lighthouse at night",')
    # Valid JSON that is not an object is refused by the DAL's rule for params.
    page.fill("[name='params']", "[1, 2, 3]")
    page.get_by_role("button", name="Save", exact=True).click()
    expect_field_error(page, "params", "must be a JSON object")
    # NaN is not JSON (Python's parser would take it).
    page.fill("[name='params']", '{"strength": NaN}')
    page.get_by_role("button", name="Save", exact=True).click()
    expect_field_error(page, "params", "invalid JSON: NaN is not valid JSON")

    assert db.tasks.get(KEYFRAME_1) == before


def test_bad_uuids_are_form_errors_and_nothing_is_written(
    page: Page, studio: str, db: Database
) -> None:
    tasks_before = db.tasks.count()
    page.goto(f"{studio}studio/tasks/create")
    page.fill("[name='project_id']", "not-a-uuid")
    page.fill("[name='task_type']", "single_image")
    page.fill("[name='params']", '{"prompt": "x"}')
    page.fill("[name='depends_on']", f"{KEYFRAME_1}\nzzz")
    page.get_by_role("button", name="Save", exact=True).click()
    expect_field_error(page, "project_id", "not a valid UUID: 'not-a-uuid'")
    expect_field_error(page, "depends_on", "depends_on[1]: not a valid UUID: 'zzz'")
    assert db.tasks.count() == tasks_before


def test_create_a_task_goes_through_the_dal(page: Page, studio: str, db: Database) -> None:
    page.goto(f"{studio}studio/tasks/create")
    page.fill("[name='project_id']", str(PROJECT))
    page.fill("[name='task_type']", "upscale")
    page.fill("[name='params']", '{"scale": 2, "big": 12345678901234567890}')
    page.fill("[name='depends_on']", f"{STITCH}, {KEYFRAME_1}")
    page.select_option("[name='status']", "Pending")
    page.get_by_role("button", name="Save and continue editing").click()
    # sqladmin goes on to the new row's edit page.
    expect(page.locator("h3.card-title")).to_have_text("Edit task")
    new_id = uuid.UUID(page.url.split("/studio/tasks/edit/")[1])
    assert new_id.version == 7  # made by the DAL (UUIDv7), not by the database

    task = db.tasks.get(new_id)
    assert (task.task_type, task.status) == ("upscale", "Pending")
    assert task.params == {"scale": 2, "big": 12345678901234567890}
    assert task.dependant_on == [STITCH, KEYFRAME_1]
    # What only the DAL does: dependency edges, so the dependency graph shows the new task.
    page.goto(f"{studio}studio/tasks/action/dependency-graph?pks={STITCH}")
    expect(page.get_by_test_id("dependents").locator(f"[data-task='{new_id}']")).to_be_visible()


def confirm_delete(page: Page) -> None:
    """Open sqladmin's delete dialog and press its button once the dialog knows its URL.

    sqladmin's script sets the button's ``data-url`` only on ``shown.bs.modal``, after the
    fade-in; a click before that sends DELETE to the current page (405).
    """
    page.get_by_role("link", name="Delete").click()
    button = page.locator("#modal-delete-button")
    expect(button).to_have_attribute("data-url", re.compile(r"/delete\?pks="))
    button.click()


def test_a_write_the_dal_refuses_is_refused_in_the_studio(
    page: Page, studio: str, db: Database
) -> None:
    # A task others still wait for cannot be deleted (TasksRepository.delete: Conflict).
    page.goto(f"{studio}studio/tasks/details/{KEYFRAME_1}")
    confirm_delete(page)
    expect(page.locator(".alert-danger")).to_contain_text("depends on task")
    assert db.tasks.find(KEYFRAME_1) is not None

    # A dependency in no project of ours: a form-valid UUID the DAL refuses.
    page.goto(f"{studio}studio/tasks/create")
    page.fill("[name='project_id']", str(PROJECT))
    page.fill("[name='task_type']", "single_image")
    page.fill("[name='depends_on']", str(uuid.uuid4()))
    before = db.tasks.count()
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".alert-danger")).to_contain_text("does not exist")
    assert db.tasks.count() == before

    # Deleting a task nothing waits for works, through the same dialog.
    page.goto(f"{studio}studio/tasks/details/{STITCH}")
    confirm_delete(page)
    expect(page).to_have_url(f"{studio}studio/tasks/list")
    assert db.tasks.find(STITCH) is None


def test_edit_a_uuid_list(page: Page, studio: str, db: Database) -> None:
    generation = seed_id("generation:storyboard-1")
    page.goto(f"{studio}studio/generations/edit/{generation}")
    expect(page.locator("[name='tasks']")).to_have_value("")
    page.fill("[name='tasks']", f'["{KEYFRAME_2}", "{KEYFRAME_1}"]')
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page).to_have_url(f"{studio}studio/generations/list")
    assert db.generations.get(generation).tasks == [KEYFRAME_2, KEYFRAME_1]
    # Shown one per line when edited again.
    page.goto(f"{studio}studio/generations/edit/{generation}")
    expect(page.locator("[name='tasks']")).to_have_value(f"{KEYFRAME_2}\n{KEYFRAME_1}")


# --- extra views -----------------------------------------------------------------------------


def test_a_shots_generations_in_position_order(page: Page, studio: str, db: Database) -> None:
    page.goto(f"{studio}studio/shots/details/{OPENING}")
    page.get_by_role("link", name="Generations in order").click()
    rows = page.get_by_test_id("timeline").locator("tbody tr")
    expected = [str(g.id) for g in db.shots.generations(OPENING)]
    assert len(expected) == 2
    expect(rows).to_have_count(2)
    assert [r.get_attribute("data-generation") for r in rows.all()] == expected
    assert page.get_by_test_id("position").all_inner_texts() == ["0", "1"]

    # Move the last generation first (through the studio's edit form: move_generation)…
    last = db.shots.placements(OPENING)[-1]
    page.goto(f"{studio}studio/shot_generations/edit/{last.id}")
    page.fill("[name='position']", "0")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page).to_have_url(f"{studio}studio/shot_generations/list")
    # …and the view follows the new order.
    page.goto(f"{studio}studio/shots/action/generations?pks={OPENING}")
    assert [r.get_attribute("data-generation") for r in rows.all()] == expected[::-1]
    assert [str(g.id) for g in db.shots.generations(OPENING)] == expected[::-1]


def test_a_tasks_dependency_graph(page: Page, studio: str, db: Database) -> None:
    page.goto(f"{studio}studio/tasks/details/{KEYFRAME_1}")
    page.get_by_role("link", name="Dependency graph").click()
    expect(page.get_by_test_id("task")).to_have_attribute("data-task", str(KEYFRAME_1))
    expect(page.get_by_test_id("dependencies")).to_contain_text("waits for no other task")
    dependents = page.get_by_test_id("dependents").locator("[data-task]")
    # Both wait for keyframe-1 directly (the stitch also through keyframe-2).
    expect(dependents).to_have_count(2)
    assert {d.get_attribute("data-task") for d in dependents.all()} == {
        str(KEYFRAME_2),
        str(STITCH),
    }
    for node in dependents.all():
        status = db.tasks.get(str(node.get_attribute("data-task"))).status
        expect(node.locator("[data-status]")).to_have_text(status)

    page.goto(f"{studio}studio/tasks/action/dependency-graph?pks={STITCH}")
    deps = page.get_by_test_id("dependencies").locator("[data-task]")
    # In the order of the stitch's dependant_on.
    assert [d.get_attribute("data-task") for d in deps.all()] == [str(KEYFRAME_1), str(KEYFRAME_2)]
    expect(page.get_by_test_id("dependents")).to_contain_text("no task waits for this one")

    page.goto(f"{studio}studio/tasks/action/dependency-graph?pks={uuid.uuid4()}")
    expect(page.get_by_text("not found")).to_be_visible()


# --- read-only -------------------------------------------------------------------------------


def status_of(
    url: str,
    *,
    method: str = "GET",
    data: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> int:
    """The HTTP status of one request made outside the browser (a forged or scripted one)."""
    body = None if data is None else urllib.parse.urlencode(data).encode()
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:  # closes the response (and its socket)
            return exc.code


def test_read_only_studio_offers_no_edits_and_refuses_writes(
    page: Page, db: Database, backend: str
) -> None:
    with running(db, read_only=True) as url:
        page.goto(url)
        expect(page.get_by_test_id("mode")).to_have_text("read-only")
        page.goto(f"{url}studio/projects/list")
        expect(page.locator("table tbody tr")).to_have_count(1)
        expect(page.get_by_role("link", name="New project")).to_have_count(0)
        expect(page.locator("a[href*='/edit/']")).to_have_count(0)
        page.goto(f"{url}studio/projects/details/{PROJECT}")
        expect(page.get_by_role("link", name="Edit")).to_have_count(0)
        expect(page.get_by_role("link", name="Delete")).to_have_count(0)

        save = {"name": "hacked", "save": "Save"}
        assert status_of(f"{url}studio/projects/edit/{PROJECT}", method="POST", data=save) == 403
        assert status_of(f"{url}studio/projects/create", method="POST", data=save) == 403
        delete = f"{url}studio/projects/delete?pks={PROJECT}"
        assert status_of(delete, method="DELETE") == 403
    assert db.projects.get(PROJECT).name == PROJECT_NAME
    assert db.projects.count() == 1


def test_cross_site_writes_and_foreign_host_names_are_refused(studio: str, db: Database) -> None:
    # A form posted from another site (CSRF) never reaches the DAL.
    edit = f"{studio}studio/projects/edit/{PROJECT}"
    forged = {"name": "csrf", "save": "Save"}
    cross_site = {"Origin": "http://evil.example"}
    assert status_of(edit, method="POST", data=forged, headers=cross_site) == 403
    assert db.projects.get(PROJECT).name == PROJECT_NAME
    # A page whose host name resolves to 127.0.0.1 (DNS rebinding) cannot even read.
    assert status_of(f"{studio}studio/", headers={"Host": "evil.example"}) == 403
    # The same requests from the studio's own origin and host name go through.
    assert status_of(f"{studio}studio/", headers={"Host": "localhost"}) == 200
    same_site = {"Origin": studio.rstrip("/")}
    assert status_of(edit, method="POST", data=forged, headers=same_site) == 200
    assert db.projects.get(PROJECT).name == "csrf"
