"""`photo-pipeline faces rematch|suggest|people|stats`: the face grouping's operator commands
(a full rematch pass, the workers also rematch by themselves; suggested people among unknown
faces; each person's radius and why; counts)."""
from __future__ import annotations

import json

import sqlalchemy as sa

from workers import db as dbmod
from workers.faces import filing, suggestions
from workers.schema import faces, images
from workers.settings import Settings


def stats(conn: sa.Connection) -> dict:
    per_status = {s: n for s, n in conn.execute(
        sa.select(faces.c.status, sa.func.count()).group_by(faces.c.status)).all()}
    one = lambda q: int(conn.execute(q).scalar() or 0)  # noqa: E731
    return {
        "faces": sum(per_status.values()),
        "per_status": per_status,
        "roots": one(sa.select(sa.func.count()).select_from(faces).where(faces.c.parent_id.is_(None),
                                                                          faces.c.status == "ok")),
        "grouped": one(sa.select(sa.func.count()).select_from(faces).where(faces.c.parent_id.is_not(None))),
        "photos_with_faces": one(sa.select(sa.func.count(sa.distinct(faces.c.image_id)))
                                 .where(faces.c.status != "not_face")),
        "photos_processed": one(sa.select(sa.func.count()).select_from(images)
                                .where(images.c.faces_at.is_not(None))),
    }


def _engine(args):
    from workers.settings import get_settings
    return dbmod.engine_for(args.db or get_settings().database_url)


def _settings(args) -> Settings:
    from workers.settings import get_settings
    settings = get_settings()
    if getattr(args, "threshold", None) is not None:
        settings = settings.model_copy(update={"face_match_threshold": args.threshold})
    return settings


def cmd_rematch(args) -> int:
    counts = filing.rematch(_engine(args), _settings(args))
    print(f"faces given a parent: {counts.pop('matched', 0)}")
    for outcome, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        label = outcome if outcome in ("kept", "refiled") or "," in outcome else f"left unassigned, {outcome}"
        print(f"  {label}: {n}")
    return 0


def cmd_suggest(args) -> int:
    settings = _settings(args)
    groups = suggestions.refresh(_engine(args), settings)
    if args.json:
        print(json.dumps([g.as_dict() for g in groups], indent=1))
    else:
        print(f"suggested groups: {len(groups)} ({sum(g.size for g in groups)} unknown faces)")
        for g in groups:
            print(f"  group {g.id}: {g.size} faces in {g.photos} photos, representative face {g.id} "
                  f"(image {g.image_id})")
    return 0


def cmd_people(args) -> int:
    metric, people = filing.people_report(_engine(args), _settings(args))
    print(f"distance: {metric.why}" + (f" (fitted in {metric.seconds:.2f} s)" if metric.learned else ""))
    share = f"{100 * metric.weight:.0f} % learned" if metric.learned else "dlib only"
    for p in people:
        near = (f"nearest person {p['nearest']} at {p['nearest_distance']:.3f} "
                f"(dlib {p['nearest_distance_dlib']:.3f})" if p["nearest"] else "no other person")
        print(f"person {p['person']:<8} {p['name'] or '':<24} approved {p['faces']:<4} "
              f"radius {p['radius']:.3f} (dlib {p['radius_dlib']:.3f}, {share})  {near}  "
              f"filed {p['filed']}, {p['filed_by_metric']} of them by the learned metric  {p['why']}")
    return 0


def cmd_stats(args) -> int:
    with _engine(args).connect() as conn:
        s = stats(conn)
    print(f"faces               {s['faces']}")
    for status in ("process", "unknown", "ok", "not_face"):
        print(f"  {status:<17} {s['per_status'].get(status, 0)}")
    print(f"roots               {s['roots']}")
    print(f"grouped             {s['grouped']}")
    print(f"photos with faces   {s['photos_with_faces']}")
    print(f"photos processed    {s['photos_processed']}")
    return 0


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("faces", help="face grouping maintenance: rematch | suggest | people | stats")
    actions = p.add_subparsers(dest="action", required=True)
    r = actions.add_parser("rematch", help="a full pass giving a parent to unknown faces without one "
                                           "(the face workers also do it by themselves after approvals)")
    r.add_argument("--threshold", type=float, help="distance threshold (default: PHOTO_FACE_MATCH_THRESHOLD)")
    r.set_defaults(func=cmd_rematch)
    g = actions.add_parser("suggest", help="cluster unknown faces without a parent into suggested "
                                           "people, largest first, with a representative face each")
    g.add_argument("--json", action="store_true", help="print the groups as JSON")
    g.set_defaults(func=cmd_suggest)
    pe = actions.add_parser("people", help="each person's approved faces and learned radius, and why")
    pe.set_defaults(func=cmd_people)
    st = actions.add_parser("stats", help="faces per status, roots, grouped, photos with faces")
    st.set_defaults(func=cmd_stats)
    for sp in (r, g, pe, st):
        sp.add_argument("--db", help="database URL (default: PHOTO_DATABASE_URL)")
