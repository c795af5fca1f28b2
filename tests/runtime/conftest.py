from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest

from tests.support import handlers
from tests.support.consumers import HANDLERS, consumer_env, start_consumer, stop_consumer



@dataclass
class Runtime:
    db_url: str
    amqp_url: str
    queue: str
    tmp_path: object
    engine: object
    procs: list = field(default_factory=list)

    def env(self, **settings) -> dict:
        settings.setdefault("heartbeat", 10)
        settings.setdefault("lock_release_delay", 1)
        return consumer_env(self.db_url, self.amqp_url, HANDLERS, **settings)

    def start(self, queue: str | None = None, **settings):
        p = start_consumer(queue or self.queue, self.env(**settings), self.tmp_path / "logs")
        self.procs.append(p)
        return p


@pytest.fixture
def rt(mysql_url, rabbitmq, tmp_path):
    from workers import db
    engine = db.engine_for(mysql_url)
    handlers.create_tables(engine)
    r = Runtime(mysql_url, rabbitmq.url, "q" + uuid.uuid4().hex[:8], tmp_path, engine)
    yield r
    for p in r.procs:
        stop_consumer(p, timeout=20)
