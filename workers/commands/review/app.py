"""The review page: a FastAPI app of server-rendered pages (Jinja2, autoescaped) and form POSTs.

Pages: the start page (suggested people and people), /suggested, /suggested/<group>, /people,
/people/<person>, /unknown, /photos/<image>; images: /crop/<size>/<face>, /view/<image>. Every
change is a POST to /actions/<name>, answered with a redirect back to the page (with a message),
so a reload never repeats it. No page holds JavaScript."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from workers.commands.review import actions, queries
from workers.commands.review.crops import CROP_SIZES, Photos, Unavailable, parse_box
from workers.commands.review.security import SESSION_COOKIE, TOKEN_PARAM, Guard, cookie_header
from workers.errors import PipelineError

HERE = Path(__file__).resolve().parent
STATIC = {"review.css": ("text/css", HERE / "static" / "review.css")}
MAX_ID = 2 ** 63 - 1
SECURITY_HEADERS = {
    # no script at all, nothing from elsewhere, never framed, the address never sent on
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass
class Library:
    """What the page reviews: a database and the photos its `images.path` are relative to."""
    engine: sa.Engine
    photos: Photos
    title: str                  # shown in the page title: the folder's name, never a URL


class NotFound(PipelineError):
    """A crafted or stale id: answered as 404."""


def _id(value: str) -> int:
    """A path's id: digits only, in range; anything else is a 404, never an error page."""
    if not value.isascii() or not value.isdigit() or len(value) > 19 or not 0 < int(value) <= MAX_ID:
        raise NotFound(value)
    return int(value)


def _page(request: Request, name: str = "page") -> int:
    value = request.query_params.get(name, "1")
    return int(value) if value.isascii() and value.isdigit() and len(value) < 9 else 1


def _safe_next(value: str | None) -> str:
    """Where a form returns: a path of this site only."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def create_app(library: Library, guard: Guard) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(["html"], default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.globals["crop_sizes"] = CROP_SIZES
    flashes: dict[str, tuple[str, str]] = {}       # session -> (kind, text) for the next page

    # ---------------------------------------------------------------- every request

    @app.middleware("http")
    async def guard_requests(request: Request, call_next):
        started = time.perf_counter()
        if not guard.host_ok(request.headers.get("host")):
            return _plain(421, "This page answers on its own address only.")
        sid = guard.session_id(request.cookies.get(SESSION_COOKIE))
        bearer = guard.bearer_ok(request.headers.get("authorization"))
        new_cookie = None
        if guard.token and not bearer and sid is None:
            offered = request.query_params.get(TOKEN_PARAM)
            if not guard.token_ok(offered):
                return _plain(401, "This review page needs its token: open the address the "
                                   "photo-pipeline review command printed.")
            # the token is exchanged for the cookie and leaves the address
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != TOKEN_PARAM]
            response = RedirectResponse(request.url.path + (f"?{urlencode(rest)}" if rest else ""), 303)
            response.headers["Set-Cookie"] = cookie_header(guard.new_session())
            return _secured(response)
        if sid is None and not bearer:
            new_cookie = guard.new_session()
            sid = guard.session_id(new_cookie)
        request.state.sid = sid
        request.state.bearer = bearer
        try:
            response = await call_next(request)
        except NotFound:
            response = _plain(404, "Not found.")
        if new_cookie:
            response.headers.append("Set-Cookie", cookie_header(new_cookie))
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
        return _secured(response)

    def render(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        sid = request.state.sid
        with library.engine.connect() as conn:
            context.setdefault("totals", queries.totals(conn))
        html = env.get_template(template).render(
            request_path=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            csrf=guard.csrf_for(sid) if sid else "", flash=flashes.pop(sid, None) if sid else None,
            library=library.title, **context)
        return HTMLResponse(html, status, headers={"Cache-Control": "no-store"})

    @app.exception_handler(404)
    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc):
        return _plain(404, "Not found.")

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc):
        return _plain(405, "Method not allowed.")

    # ---------------------------------------------------------------- pages

    @app.get("/")
    def start(request: Request):
        with library.engine.connect() as conn:
            totals = queries.totals(conn)
            groups = queries.groups(conn, queries.page_of(1, totals["groups"], queries.LIST_PAGE_SIZE))
            people = queries.people(conn, queries.page_of(1, totals["people"], queries.LIST_PAGE_SIZE))
        return render(request, "index.html", title="Review", totals=totals, groups=groups, people=people)

    @app.get("/suggested")
    def suggested(request: Request):
        with library.engine.connect() as conn:
            page = queries.page_of(_page(request), queries.count_groups(conn), queries.LIST_PAGE_SIZE)
            groups = queries.groups(conn, page)
        return render(request, "groups.html", title="Suggested people", groups=groups, page=page)

    @app.get("/suggested/{group_id}")
    def suggested_one(request: Request, group_id: str):
        gid = _id(group_id)
        with library.engine.connect() as conn:
            found = queries.group(conn, gid)
            if found is None:
                return render(request, "gone.html", 404, title="Suggested person",
                              what="This suggested person has no faces left (named, reviewed or regrouped).")
            group, digest = found
            page = queries.page_of(_page(request), group.size, queries.PAGE_SIZE)
            members = queries.group_faces(conn, gid, page)
            names = queries.names(conn)
        return render(request, "group.html", title=f"Suggested person {gid}", group=group, digest=digest,
                      faces=members, page=page, names=names)

    @app.get("/people")
    def people(request: Request):
        with library.engine.connect() as conn:
            page = queries.page_of(_page(request), queries.count_people(conn), queries.LIST_PAGE_SIZE)
            found = queries.people(conn, page)
        return render(request, "people.html", title="People", people=found, page=page)

    @app.get("/people/{person_id}")
    def person(request: Request, person_id: str):
        pid = _id(person_id)
        with library.engine.connect() as conn:
            found = queries.person(conn, pid)
            if found is None:
                return render(request, "gone.html", 404, title="Person",
                              what="There is no such person (merged into another one, or never was).")
            approved_page = queries.page_of(_page(request, "approved"), found.approved, queries.PAGE_SIZE)
            filed_page = queries.page_of(_page(request, "filed"), found.filed, queries.PAGE_SIZE)
            approved = queries.approved_faces(conn, pid, approved_page)
            filed = queries.filed_faces(conn, pid, filed_page)
            names = [n for n in queries.names(conn) if n[0] != pid]
        return render(request, "person.html", title=found.label, person=found, approved=approved,
                      filed=filed, approved_page=approved_page, filed_page=filed_page, names=names)

    @app.get("/unknown")
    def unknown(request: Request):
        with library.engine.connect() as conn:
            page = queries.page_of(_page(request), queries.count_unknown(conn), queries.PAGE_SIZE)
            found = queries.unknown_faces(conn, page)
            names = queries.names(conn)
        return render(request, "unknown.html", title="Unknown faces", faces=found, page=page, names=names)

    @app.get("/photos/{image_id}")
    def photo(request: Request, image_id: str):
        iid = _id(image_id)
        with library.engine.connect() as conn:
            path = queries.image_path(conn, iid)
            if path is None:
                raise NotFound(image_id)
            found = queries.photo_faces(conn, iid)
        try:
            width, height = library.photos.oriented_size(path)
        except Unavailable:
            width = height = None
        boxes = []
        for f in found:
            box = parse_box(f.location)
            if box and width:
                top, right, bottom, left = box
                boxes.append({"face": f, "x": left, "y": top, "w": right - left, "h": bottom - top})
        return render(request, "photo.html", title=f"Photo {iid}", image_id=iid, path=path, faces=found,
                      boxes=boxes, width=width, height=height,
                      stroke=max(2, (width or 0) // 300), font=max(12, (width or 0) // 45))

    # ---------------------------------------------------------------- images

    def _image(result) -> Response:
        headers = {"Cache-Control": "private, max-age=86400"}
        if isinstance(result, Path):
            return FileResponse(result, media_type="image/jpeg", headers=headers)
        return Response(result, media_type="image/jpeg", headers=headers)

    @app.get("/crop/{size}/{face_id}")
    def crop(size: str, face_id: str):
        fid, px = _id(face_id), _id(size)
        if px not in CROP_SIZES:
            raise NotFound(size)
        with library.engine.connect() as conn:
            source = queries.crop_source(conn, fid)
        if source is None:
            raise NotFound(face_id)
        try:
            return _image(library.photos.crop(source.path, source.location, px))
        except Unavailable:
            raise NotFound(face_id) from None

    @app.get("/view/{image_id}")
    def view(image_id: str):
        iid = _id(image_id)
        with library.engine.connect() as conn:
            path = queries.image_path(conn, iid)
        if path is None:
            raise NotFound(image_id)
        try:
            return _image(library.photos.view(path))
        except Unavailable:
            raise NotFound(image_id) from None

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC:
            raise NotFound(name)
        media, path = STATIC[name]
        return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=3600"})

    # ---------------------------------------------------------------- actions

    @app.post("/actions/{name}")
    async def act(request: Request, name: str):
        form = await request.form()
        back = _safe_next(form.get("next"))
        if not request.state.bearer and not guard.csrf_ok(request.state.sid, form.get("csrf")):
            return _plain(403, "This form is out of date or came from another site: reload the page "
                               "and try again. Nothing was changed.")
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            return _plain(403, "This form came from another site. Nothing was changed.")
        handler = ACTIONS.get(name)
        if handler is None:
            raise NotFound(name)
        try:
            text, kind = await run_in_threadpool(handler, library.engine, form), "ok"
        except actions.Conflict as exc:
            text, kind = str(exc), "conflict"
        except actions.ActionError as exc:
            text, kind = str(exc), "error"
        except (ValueError, KeyError):
            text, kind = "That form was not filled in as expected. Nothing was changed.", "error"
        except sa.exc.OperationalError:
            text, kind = ("The database was busy with another change; nothing was changed. "
                          "Try again."), "conflict"
        if request.state.sid:
            flashes[request.state.sid] = (kind, text)
        if request.state.bearer and not request.state.sid:       # a script: the outcome as text
            return _plain(200 if kind == "ok" else 409, text)
        return RedirectResponse(back, 303)

    return app


# ---------------------------------------------------------------- form -> action

def _selected(form) -> dict[int, str]:
    """The selected faces and the state the page showed each in."""
    out = {}
    for value in form.getlist("face"):
        fid = int(value)
        out[fid] = str(form[f"state-{fid}"])
    return out


def _optional_id(value) -> int | None:
    return int(value) if value not in (None, "") else None


ACTIONS = {
    "name-group": lambda engine, form: actions.name_group(
        engine, int(form["group"]), str(form["digest"]), set(_selected(form)), name=form.get("name")),
    "remove-from-group": lambda engine, form: actions.remove_from_group(
        engine, int(form["group"]), _selected(form)),
    "confirm": lambda engine, form: actions.confirm(engine, int(form["person"]), _selected(form)),
    "not-this-person": lambda engine, form: actions.not_this_person(engine, int(form["person"]), _selected(form)),
    "not-a-face": lambda engine, form: actions.not_a_face(engine, _selected(form)),
    "assign": lambda engine, form: actions.assign(engine, str(form.get("name") or ""), _selected(form)),
    "rename": lambda engine, form: actions.rename(engine, int(form["person"]), form.get("shown_name") or None,
                                                  str(form.get("name") or "")),
    "merge": lambda engine, form: actions.merge(engine, int(form["person"]), form.get("shown_name") or None,
                                                str(form.get("into") or "")),
}


def _selection_action(engine, form) -> str:
    """One form, several buttons: the button pressed names the action."""
    handler = ACTIONS.get(str(form.get("do", "")))
    if handler is None or form.get("do") == "selection":
        raise actions.ActionError("No action was chosen.")
    return handler(engine, form)


ACTIONS["selection"] = _selection_action


def _plain(status: int, text: str) -> Response:
    return Response(text + "\n", status, media_type="text/plain; charset=utf-8",
                    headers={"Cache-Control": "no-store"})


def _secured(response: Response) -> Response:
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    return response
