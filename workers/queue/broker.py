"""RabbitMQ as vyuldashev/laravel-queue-rabbitmq uses it (docs/laravel-wire.md), over pika.

Queues are declared exactly like the driver does, so PHP and Python workers can share a broker:
main queues durable without arguments (only if missing), delay queues `{queue}.delay.{ms}` with
the dead-letter arguments in the driver's order. Publishing is to the default exchange with
routing key = queue name, `mandatory`, and waits for the broker's confirm when the channel is in
confirm mode (`channel.confirm_delivery()`; `connect()` does that)."""
from __future__ import annotations

import math

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker

from workers.laravel import OutgoingMessage

# channel -> names declared through it (the driver declares each name once per process)
_declared: dict[int, set[str]] = {}


def connect(url: str, heartbeat: int | None = None) -> tuple[BlockingConnection, BlockingChannel]:
    """A connection and a confirm-mode channel with prefetch 1."""
    params = pika.URLParameters(url)
    if heartbeat is not None:
        params.heartbeat = heartbeat
    params.connection_attempts = 1
    params.blocked_connection_timeout = 300
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_qos(prefetch_count=1)
    return conn, ch


def _seen(channel: BlockingChannel) -> set[str]:
    return _declared.setdefault(id(channel), set())


def declare_queue(channel: BlockingChannel, queue: str) -> None:
    """`declareDestination`: passive check on a throwaway channel; declare durable, no args, if missing.

    An existing queue is left alone (whatever arguments it has)."""
    seen = _seen(channel)
    if queue in seen:
        return
    probe = channel.connection.channel()
    try:
        probe.queue_declare(queue, passive=True)
    except ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
        channel.queue_declare(queue, durable=True, exclusive=False, auto_delete=False)
    finally:
        if probe.is_open:
            probe.close()
    seen.add(queue)


def delay_queue_name(queue: str, ttl_ms: int) -> str:
    return f"{queue}.delay.{ttl_ms}"


def declare_delay_queue(channel: BlockingChannel, queue: str, ttl_ms: int) -> str:
    """`laterRaw`'s delay queue: dead-letters back to `queue` after `ttl_ms`, expires when unused.

    Declared before every publish, not once per process like the driver: the declare counts as
    "use", so the queue cannot expire (x-expires = 2*ttl) between our declare and our publish and
    take the message with it."""
    name = delay_queue_name(queue, ttl_ms)
    channel.queue_declare(name, durable=True, exclusive=False, auto_delete=False, arguments={
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
        "x-message-ttl": ttl_ms,
        "x-expires": ttl_ms * 2,
    })
    return name


def properties(msg_props: dict) -> pika.BasicProperties:
    """OutgoingMessage.properties (content_type, delivery_mode, correlation_id, headers) for pika."""
    return pika.BasicProperties(**msg_props)


def delay_ms(delay: float | int | None) -> int:
    """`secondsUntil($delay) * 1000`: whole seconds (rounded up here so 0.5 s is not 'now')."""
    if not delay or delay <= 0:
        return 0
    return int(math.ceil(delay)) * 1000


def publish_raw(channel: BlockingChannel, body: bytes, props: dict, queue: str, delay: float = 0) -> None:
    """`pushRaw` (delay 0) or `laterRaw`: returns once the broker confirmed (confirm mode).

    Raises pika.exceptions.UnroutableError / NackError when the broker did not take it."""
    declare_queue(channel, queue)
    ttl = delay_ms(delay)
    target = declare_delay_queue(channel, queue, ttl) if ttl else queue
    channel.basic_publish("", target, body, properties(props), mandatory=True)


def publish(channel: BlockingChannel, msg: OutgoingMessage, queue: str | None = None,
            delay: float = 0, attempts: int | None = None) -> None:
    """Publish a built Laravel job to `queue` (default: the job's own queue, else 'default')."""
    props = dict(msg.properties)
    if attempts is not None:
        props["headers"] = {**(props.get("headers") or {}), "laravel": {"attempts": int(attempts)}}
    publish_raw(channel, msg.body, props, queue or msg.queue or "default", delay)


def forget_channel(channel: BlockingChannel) -> None:
    _declared.pop(id(channel), None)
