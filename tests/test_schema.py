import sqlalchemy as sa

from workers import db, schema


def test_migrate_is_idempotent(any_db_url):
    assert db.migrate(db.engine_for(any_db_url)) == []


def test_migrate_extends_the_apps_existing_tables(mariadb):
    """The Laravel app already has images/faces: we add our nullable columns, keep theirs."""
    url = mariadb.create_database("t_existing")
    eng = db.engine_for(url)
    with eng.begin() as c:
        c.execute(sa.text("CREATE TABLE images (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,"
                          " path VARCHAR(255) NOT NULL, user_id BIGINT)"))
        c.execute(sa.text("INSERT INTO images (path, user_id) VALUES ('a.jpg', 7)"))
    assert db.migrate(eng) == ["0001_initial", "0002_face_grouping", "0003_face_review_index", "0004_face_metrics",
                                "0005_face_unreviewed_index"]
    cols = {c["name"] for c in sa.inspect(eng).get_columns("images")}
    assert {"user_id", "latitude", "thumbnails", "city"} <= cols
    with eng.begin() as c:
        assert c.execute(sa.select(schema.images.c.path)).scalar() == "a.jpg"


def test_sql_schema_file_is_current():
    """sql/schema.sql is what operators read: it must be the schema the code migrates to."""
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "sql" / "schema.sql"
    assert path.read_text() == db.mysql_ddl(), "regenerate: python -m workers schema > sql/schema.sql"
