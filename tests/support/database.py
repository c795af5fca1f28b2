"""Reading what the workers wrote, for assertions."""
from __future__ import annotations

import sqlalchemy as sa

from workers.schema import failed_jobs


def failed_rows(engine):
    with engine.connect() as c:
        return c.execute(sa.select(failed_jobs).order_by(failed_jobs.c.id)).all()
