"""The review page in a real browser (Debian's chromium), on a library made by really processing
photos, against SQLite and MariaDB: every action a reviewer takes, and the rows it leaves."""
from __future__ import annotations

import re

import sqlalchemy as sa

from tests.support.review import screenshot
from workers.faces import filing
from workers.schema import faces
from workers.settings import Settings


def flash(page) -> str:
    return page.locator(".flash").inner_text()


def check_crops(page) -> int:
    """Every crop is <img data-face-id=N> with N its face, and it really loaded."""
    crops = page.locator("img[src^='/crop/']")
    for i in range(crops.count()):
        img = crops.nth(i)
        img.scroll_into_view_if_needed()
        src, face_id = img.get_attribute("src"), img.get_attribute("data-face-id")
        assert face_id and src.endswith(f"/{face_id}"), (src, face_id)
    page.wait_for_load_state("networkidle")
    broken = page.evaluate("[...document.querySelectorAll('img[data-face-id]')]"
                           ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    assert broken == []
    return crops.count()


def rematch(library) -> None:
    """What the face workers' automatic rematch does after approvals change."""
    filing.rematch(library.engine, Settings(database_url=library.url))


def test_review_a_library(library, server, page, shots):
    colin, putin, serena = (library.group_of(p) for p in ("Colin_Powell", "Vladimir_Putin", "Serena_Williams"))
    page.goto(server.url)
    assert page.locator("h1").first.inner_text().startswith("Suggested people")
    assert check_crops(page) > 0
    screenshot(page, shots, "start")

    # a suggested person: drop two faces from it first, then name it leaving one more out
    page.click(f".card a.button[href='/suggested/{colin}']")
    members = [int(v) for v in page.locator("input[name=face]").evaluate_all("e => e.map(i => i.value)")]
    assert len(members) == 10 and check_crops(page) == 10
    screenshot(page, shots, "suggested-person")
    dropped, left_out = members[-2:], members[-3]
    for face_id in dropped:
        page.check(f"input[name=face][value='{face_id}']")
    page.click("button[value=remove-from-group]")
    assert "2 faces removed" in flash(page)
    assert all(library.face(f).suggested_group is None and library.face(f).status == "unknown" for f in dropped)
    page.check(f"input[name=face][value='{left_out}']")
    page.fill("#name", "Colin Powell")
    page.click("button[value=name-group]")
    assert "7 faces named Colin Powell (a new person)" in flash(page)
    root = library.people()["Colin Powell"]
    assert root == colin and library.face(root).parent_id is None and library.face(root).status == "ok"
    named = [f for f in members if f not in dropped and f != left_out]
    for f in named:
        row = library.face(f)
        assert row.status == "ok" and row.parent_id == (None if f == root else root) and row.suggested_group is None
    assert library.face(left_out).status == "unknown" and library.face(left_out).parent_id is None
    assert (left_out, root) in library.rejections()

    # the workers' rematch files the dropped faces under the new person, never the one left out
    rematch(library)
    assert {library.face(f).parent_id for f in dropped} == {root}
    assert library.face(left_out).parent_id is None
    page.goto(server.base + f"people/{root}")
    filed = [int(v) for v in page.locator("#filed input[name=face]").evaluate_all("e => e.map(i => i.value)")]
    assert sorted(filed) == sorted(dropped)
    check_crops(page)
    screenshot(page, shots, "person")
    page.check(f"#filed input[name=face][value='{dropped[0]}']")
    page.click("#filed button[value=confirm]")
    assert "Confirmed 1 face" in flash(page)
    assert library.face(dropped[0]).status == "ok" and library.face(dropped[0]).parent_id == root
    page.check(f"#filed input[name=face][value='{dropped[1]}']")
    page.click("#filed button[value=not-this-person]")
    assert "not this person" in flash(page)
    row = library.face(dropped[1])
    assert row.status == "unknown" and row.parent_id is None and row.matched_parent_id is None
    assert (dropped[1], root) in library.rejections()
    rematch(library)
    assert library.face(dropped[1]).parent_id is None            # remembered: never filed back

    # unknown faces: not a face
    page.click("nav a[href='/unknown']")
    unknown = [int(v) for v in page.locator("input[name=face]").evaluate_all("e => e.map(i => i.value)")]
    assert left_out in unknown and dropped[1] in unknown
    check_crops(page)
    screenshot(page, shots, "unknown")
    page.check(f"input[name=face][value='{left_out}']")
    page.click("button[value=not-a-face]")
    assert "1 face marked not a face" in flash(page)
    assert library.face(left_out).status == "not_face" and library.face(left_out).parent_id is None

    # two people made separately (half a suggestion named, the other half given by name), merged
    page.goto(server.base + f"suggested/{putin}")
    half = [int(v) for v in page.locator("input[name=face]").evaluate_all("e => e.map(i => i.value)")][5:]
    for f in half:
        page.check(f"input[name=face][value='{f}']")
    page.click("button[value=remove-from-group]")
    page.fill("#name", "Putin")
    page.click("button[value=name-group]")
    page.goto(server.base + "unknown")
    for f in half:
        page.check(f"input[name=face][value='{f}']")
    page.fill("#assign-to", "Vladimir Putin")
    page.click("button[value=assign]")
    assert "5 faces given to Vladimir Putin (a new person)" in flash(page)
    people = library.people()
    short, full = people["Putin"], people["Vladimir Putin"]
    page.goto(server.base + f"people/{short}")
    page.fill("#into", "Vladimir Putin")
    page.click("form[action='/actions/merge'] button")
    assert "Merged Putin into Vladimir Putin (5 faces moved)" in flash(page)
    assert "Putin" not in library.people()
    assert library.face(short).parent_id == full and library.face(short).name is None
    with library.engine.connect() as conn:
        under = conn.execute(sa.select(sa.func.count()).where(faces.c.parent_id == full, faces.c.status == "ok")).scalar()
    assert under == 9                                            # ten faces: the root and nine
    assert page.url.endswith(f"/people/{short}")                 # the merged person is gone
    assert page.locator("main h1").inner_text() == "Person"

    # rename, with HTML in the name: shown as text, never markup
    hostile = "<b>Vlad</b> & <script>alert(1)</script>"
    page.goto(server.base + f"people/{full}")
    page.fill("#rename", hostile)
    page.click("form[action='/actions/rename'] button")
    assert "Renamed to" in flash(page)
    assert library.face(full).name == hostile
    assert page.locator("main h1").inner_text() == hostile
    assert page.locator("main b, main script").count() == 0
    page.goto(server.base + "people")
    assert hostile in page.locator(".people").inner_text()
    check_crops(page)
    screenshot(page, shots, "people")

    # a photo: every face boxed and labelled
    page.goto(server.base + f"people/{root}")
    page.click(f"#approved a.crop >> nth=1")
    assert re.search(r"/photos/\d+", page.url)
    labels = page.locator("svg text.label").all_text_contents()
    assert labels and "Colin Powell" in labels
    assert page.locator("svg rect.box").count() == page.locator("li.face img[data-face-id]").count()
    screenshot(page, shots, "photo")

    # a photo of two people nobody named yet
    friends = library.faces_of("Friends")
    assert len(friends) == 2
    page.goto(server.base + "unknown")
    page.click(f"a.crop:has(img[data-face-id='{friends[0]}'])")
    assert page.locator("svg text.label").all_text_contents() == ["unknown", "unknown"]
    assert page.locator("svg rect.box").count() == 2 and page.locator("li.face:target").count() == 1
    screenshot(page, shots, "photo-two-people")

    # the suggested people left, one of them named by a name already given: added to that person
    page.goto(server.base + f"suggested/{serena}")
    page.fill("#name", "colin powell")
    page.click("button[value=name-group]")
    assert "8 faces named Colin Powell." in flash(page)
    assert all(library.face(f).parent_id == root for f in library.faces_of("Serena_Williams"))
    page.goto(server.base + "suggested")
    check_crops(page)
    screenshot(page, shots, "suggested")


def test_someone_else_changed_the_rows_first(library, server, page, shots):
    """The page showed a state; another writer changed it before the click: a clear message,
    nothing written, the other writer's change kept."""
    venus = library.group_of("Venus_Williams")
    page.goto(server.base + f"suggested/{venus}")
    members = library.faces_of("Venus_Williams")
    taken = members[3]
    library.write(taken, status="ok", parent_id=None, name="Approved in the Laravel app")   # meanwhile
    page.fill("#name", "Venus Williams")
    page.click("button[value=name-group]")
    text = flash(page)
    assert "Nothing was changed" in text and "changed since the page was shown" in text
    assert page.locator(".flash.conflict").count() == 1
    screenshot(page, shots, "conflict")
    assert "Venus Williams" not in library.people()
    assert library.face(taken).name == "Approved in the Laravel app"
    assert all(library.face(f).status == "unknown" for f in members if f != taken)

    # a person renamed elsewhere: the rename and the merge shown with the old name refuse
    page.goto(server.base + f"suggested/{library.group_of('Hwang_Yeji')}")
    page.fill("#name", "Yeji")
    page.click("button[value=name-group]")
    yeji = library.people()["Yeji"]
    page.goto(server.base + f"people/{yeji}")
    library.write(yeji, name="Hwang Yeji")
    page.fill("#rename", "Yeji (ITZY)")
    page.click("form[action='/actions/rename'] button")
    assert "renamed to 'Hwang Yeji' meanwhile" in flash(page)
    assert library.face(yeji).name == "Hwang Yeji"

    # a filed face the rematch moved meanwhile: confirming it refuses
    others = [f for f in library.faces_of("Hwang_Yeji") if library.face(f).parent_id == yeji][:1]
    page.goto(server.base + f"people/{yeji}")
    library.write(others[0], status="unknown")                      # unapproved meanwhile
    page.check(f"#approved input[name=face][value='{others[0]}']")
    page.click("#approved button[value=not-a-face]")
    assert "Nothing was changed: face" in flash(page)
    assert library.face(others[0]).status == "unknown" and library.face(others[0]).parent_id == yeji


def test_embedded_library_files_faces_by_itself(processed_library, tmp_path, page):
    """`review DIR` on the folder `process DIR` made: no face worker runs there, so the command
    runs the automatic rematch itself; the page shows its filings on reload."""
    import shutil
    import time

    from tests.support.review import Library, Server
    from workers import db

    folder = tmp_path / "photos"
    shutil.copytree(processed_library, folder)
    url = f"sqlite:///{folder / '.photo-pipeline' / 'photo.db'}"
    library = Library(folder, url, db.engine_for(url))
    srv = Server(str(folder))
    try:
        colin = library.group_of("Colin_Powell")
        page.goto(srv.base + f"suggested/{colin}")
        members = [int(v) for v in page.locator("input[name=face]").evaluate_all("e => e.map(i => i.value)")]
        for face_id in members[-2:]:
            page.check(f"input[name=face][value='{face_id}']")
        page.click("button[value=remove-from-group]")
        page.fill("#name", "Colin Powell")
        page.click("button[value=name-group]")
        root = library.people()["Colin Powell"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and {library.face(f).parent_id for f in members[-2:]} != {root}:
            time.sleep(0.5)
        assert {library.face(f).parent_id for f in members[-2:]} == {root}
        assert all(library.face(f).status == "unknown" for f in members[-2:])     # filed, not approved
        page.goto(srv.base + f"people/{root}")
        assert page.locator("#filed img[data-face-id]").count() == 2
    finally:
        srv.stop()
