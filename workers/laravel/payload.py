"""Laravel queue payloads: decode what Laravel publishes, build what Laravel would publish.

Decoding (:func:`decode_payload`) accepts the shapes Laravel 8 through 13 write
(``Illuminate\\Queue\\Queue::createObjectPayload`` plus the RabbitMQ driver's ``id``), plain or
encrypted (``ShouldBeEncrypted``) commands, and keeps unknown top-level keys.

Building (:func:`build_payload`, :func:`build_chain_payload`, :func:`next_chain_message`) returns an
:class:`OutgoingMessage`: the exact body bytes (``json_encode(..., JSON_UNESCAPED_UNICODE)``) and the
AMQP properties vyuldashev/laravel-queue-rabbitmq sets. Property order and omission inside the
serialized command follow a :class:`Profile` (a Laravel version's ``Queueable`` layout and whether
``SerializesModels`` omits properties equal to their default, which it does since 9.4).
"""

from __future__ import annotations

import json
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from . import crypto
from .php_json import PhpJsonError, php_json_encode
from .php_serialize import (
    PROTECTED, PUBLIC, PhpObject, PhpSerializeError, dumps, format_php_float, loads,
)
from .errors import WireFormatError

__all__ = [
    "PayloadError",
    "Profile",
    "PROFILES",
    "DEFAULT_PROFILE",
    "JobClass",
    "ChainedJob",
    "DecodedJob",
    "OutgoingMessage",
    "decode_payload",
    "attempts_from_headers",
    "make_command",
    "build_payload",
    "build_chain_payload",
    "payload_for_command",
    "next_chain_message",
    "infer_profile",
    "to_jsonable",
    "CALL_QUEUED_HANDLER",
]

CALL_QUEUED_HANDLER = "Illuminate\\Queue\\CallQueuedHandler@call"


class PayloadError(WireFormatError):
    """The message body is not a Laravel job payload we can decode (or cannot be built)."""


# --------------------------------------------------------------------------------------------
# profiles

_Q_L8 = ("connection", "queue", "chainConnection", "chainQueue", "chainCatchCallbacks",
         "delay", "afterCommit", "middleware", "chained")
_Q_L11 = ("connection", "queue", "delay", "afterCommit", "middleware", "chained",
          "chainConnection", "chainQueue", "chainCatchCallbacks")
_Q_L12 = ("connection", "queue", "messageGroup", "deduplicator", "delay", "afterCommit", "middleware",
          "chained", "chainConnection", "chainQueue", "chainCatchCallbacks")
_Q_L13 = ("connection", "queue", "messageGroup", "deduplicator", "debounceOwner", "uniqueLockOwner",
          "delay", "afterCommit", "middleware", "chained", "chainConnection", "chainQueue",
          "chainCatchCallbacks")

# declared defaults of Bus\Queueable (everything else is an untyped property, default null)
QUEUEABLE_DEFAULTS: dict[str, Any] = {"middleware": [], "chained": [], "debounceOwner": "", "uniqueLockOwner": ""}
# InteractsWithQueue::$job (the worker's Job instance, null at dispatch)
TRAIT_PROPS = ("job",)


@dataclass(frozen=True)
class Profile:
    """How a Laravel version lays out a job object and its payload."""

    name: str
    queueable: tuple[str, ...]
    omit_defaults: bool  # SerializesModels >= 9.4 skips properties === their default
    created_at: bool = False  # payload "createdAt" (>= 12.11)
    delay_key: bool = False  # payload "delay" (>= 12.11)
    batch_id: bool = False  # payload data.batchId (>= 12.51)
    delete_when_missing_models: bool = False  # payload key (13.x)

    def queueable_props(self) -> tuple[str, ...]:
        return self.queueable


PROFILES: dict[str, Profile] = {
    # Laravel 8.x / 9.0-9.3 with SerializesModels, or any 8-10 job without it: every property written
    "laravel8": Profile("laravel8", _Q_L8, omit_defaults=False),
    "laravel9": Profile("laravel9", _Q_L8, omit_defaults=True),
    "laravel10": Profile("laravel10", _Q_L8, omit_defaults=True),
    "laravel11": Profile("laravel11", _Q_L11, omit_defaults=True),
    "laravel12": Profile("laravel12", _Q_L12, omit_defaults=True, created_at=True, delay_key=True, batch_id=True),
    "laravel13": Profile("laravel13", _Q_L13, omit_defaults=True, created_at=True, delay_key=True,
                         batch_id=True, delete_when_missing_models=True),
}
# jobs use SerializesModels; the 11.x layout also matches 12.x/13.x commands byte for byte when the
# newer Queueable properties are at their defaults (payload keys differ: pick laravel12/13 for those).
DEFAULT_PROFILE = "laravel11"


def get_profile(profile: str | Profile | None) -> Profile:
    if profile is None:
        return PROFILES[DEFAULT_PROFILE]
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise PayloadError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}") from None


@dataclass(frozen=True)
class JobClass:
    """What PHP knows from the job's class definition and Python cannot read from the message.

    ``tries``/``backoff``/``timeout``/... are the class's property defaults (they go into the payload,
    and into the command only with a non-omitting profile). ``data_visibility`` is ``"public"``,
    ``"protected"`` or ``"private"`` (declared on the job class itself).
    """

    name: str
    data_property: str = "data"
    data_visibility: str = PUBLIC
    tries: int | None = None
    max_exceptions: int | None = None
    backoff: int | str | Sequence[int] | None = None
    timeout: int | None = None
    fail_on_timeout: bool | None = None
    retry_until: int | None = None
    delete_when_missing_models: bool | None = None
    encrypted: bool = False  # implements ShouldBeEncrypted

    def data_vis(self) -> str:
        if self.data_visibility == "private":
            return "private:" + self.name
        return self.data_visibility

    def declared_props(self) -> list[tuple[str, Any]]:
        """Class-level property defaults, in the order the test job classes declare them.

        ``retry_until`` is left out: jobs normally define ``retryUntil()`` as a method.
        """
        out = []
        for name, v in (("tries", self.tries), ("maxExceptions", self.max_exceptions),
                        ("backoff", self.backoff), ("timeout", self.timeout),
                        ("failOnTimeout", self.fail_on_timeout)):
            if v is not None:
                out.append((name, list(v) if isinstance(v, (list, tuple)) else v))
        return out


def _job_class(cls: str | JobClass, classes: Mapping[str, JobClass] | None = None) -> JobClass:
    if isinstance(cls, JobClass):
        return cls
    if classes and cls in classes:
        return classes[cls]
    return JobClass(cls)


# --------------------------------------------------------------------------------------------
# decoded shapes


@dataclass
class ChainedJob:
    class_name: str
    data: Any
    command: PhpObject
    raw: str | bytes  # the serialized string exactly as found in `chained`


@dataclass
class DecodedJob:
    payload: dict  # the whole decoded body (unknown keys kept, order kept)
    class_name: str  # data.commandName (or the part before '@' for string jobs)
    display_name: str | None
    command: PhpObject | None  # None for string payloads (Queue::push('Class@method', ...))
    data: Any  # the command's data property (whatever its visibility); None if absent
    chain: list[ChainedJob]
    uuid: str | None
    id: str | None
    max_tries: int | None
    max_exceptions: int | None
    backoff: str | None
    timeout: int | None
    retry_until: int | None
    fail_on_timeout: bool
    attempts: int
    encrypted: bool
    connection: Any = None
    queue: Any = None
    delay: Any = None
    chain_connection: Any = None
    chain_queue: Any = None
    chain_catch_callbacks: Any = None
    body: bytes = b""
    data_property: str = "data"

    @property
    def chained_raw(self) -> list:
        return [c.raw for c in self.chain]

    def backoff_for_attempt(self, attempts: int | None = None, default: int = 0) -> int:
        """``Worker::calculateBackoff``: element ``[attempts-1]`` of ``backoff`` (``payload.backoff ?? payload.delay``)."""
        b = self.backoff if self.backoff is not None else self.payload.get("delay")
        if b is None or b == "":
            return int(default)
        parts = str(b).split(",")
        n = (self.attempts if attempts is None else attempts) - 1
        item = parts[n] if 0 <= n < len(parts) else parts[-1]
        try:
            return int(float(item.strip()))
        except ValueError:
            return 0


@dataclass
class OutgoingMessage:
    """What to publish: body bytes + AMQP properties (pika-agnostic), and where."""

    body: bytes
    properties: dict
    queue: str | None = None  # command->queue (None: the connection's default queue)
    connection: str | None = None  # command->connection (None: the default connection)
    delay: Any = None  # command->delay (set: publish via the {queue}.delay.{ms} queue)
    payload: dict = field(default_factory=dict)
    command: PhpObject | None = None


# --------------------------------------------------------------------------------------------
# decode


def attempts_from_headers(headers: Mapping | None) -> int:
    """``RabbitMQJob::attempts()``: ``headers['laravel']['attempts'] + 1``, or 1 without headers."""
    if not headers:
        return 1
    lar = headers.get("laravel") if isinstance(headers, Mapping) else None
    if lar is None and isinstance(headers, Mapping):
        lar = headers.get(b"laravel")
    if not isinstance(lar, Mapping):
        return 1
    a = lar.get("attempts", lar.get(b"attempts", 0))
    try:
        return int(a) + 1
    except (TypeError, ValueError):
        return 1


def _int_or_none(v: Any) -> int | None:
    if v is None or isinstance(v, bool):
        return None if v is None else int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return int(v)
    if isinstance(v, str):
        try:
            return int(float(v))
        except ValueError:
            return None
    return None


def _command_from_string(command: Any, key: bytes | None, previous_keys: Iterable[bytes]) -> tuple[PhpObject, bool]:
    if not isinstance(command, str):
        raise PayloadError("data.command is not a string")
    if command.startswith("O:"):
        obj = loads(command)
        encrypted = False
    else:
        plain = crypto.decrypt(command, key, previous_keys)
        # Encrypter::encrypt() serializes again: the plaintext is s:<n>:"O:...";
        inner = loads(plain)
        if isinstance(inner, str) and inner.startswith("O:"):
            obj = loads(inner)
        elif isinstance(inner, bytes) and inner.startswith(b"O:"):
            obj = loads(inner)
        elif isinstance(inner, PhpObject):
            obj = inner
        else:
            raise PayloadError("decrypted command is not a serialized job")
        encrypted = True
    if not isinstance(obj, PhpObject):
        raise PayloadError("data.command is not a serialized object")
    return obj, encrypted


def _chain(command: PhpObject, data_property: str) -> list[ChainedJob]:
    chained = command.get("chained")
    if not chained:
        return []
    items = chained.values() if isinstance(chained, dict) else chained
    if not isinstance(items, (list, type({}.values()))):
        raise PayloadError("command 'chained' is not an array")
    out = []
    for raw in items:
        if not isinstance(raw, (str, bytes)):
            raise PayloadError("a chained job is not a serialized string")
        obj = loads(raw)
        if not isinstance(obj, PhpObject):
            raise PayloadError("a chained job is not a serialized object")
        out.append(ChainedJob(obj.class_name, obj.get(data_property), obj, raw))
    return out


def decode_payload(
    body: bytes | str,
    headers: Mapping | None = None,
    *,
    app_key: str | bytes | None = None,
    previous_keys: Iterable[str | bytes] = (),
    data_property: str = "data",
) -> DecodedJob:
    """Decode a message body as Laravel's worker would (``attempts`` from the AMQP headers).

    ``app_key`` is APP_KEY (``base64:...`` or raw; raw 16/32-byte ``bytes`` accepted as is).
    Raises :class:`PayloadError`, :class:`~.php_serialize.PhpSerializeError` or
    :class:`~.crypto.DecryptError` (:class:`~.crypto.MissingAppKeyError` without a key).
    """
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise PayloadError(f"message body is not JSON: {e}") from None
    if not isinstance(payload, dict):
        raise PayloadError("message body is not a JSON object")

    key = _key_bytes(app_key)
    prev = [k for k in (_key_bytes(k) for k in previous_keys) if k]

    data = payload.get("data")
    job = payload.get("job")
    command: PhpObject | None = None
    encrypted = False
    if isinstance(data, dict) and "command" in data:
        command, encrypted = _command_from_string(data["command"], key, prev)
        class_name = data.get("commandName") or command.class_name
        job_data = command.get(data_property)
        chain = _chain(command, data_property)
    elif isinstance(job, str):
        class_name = job.split("@", 1)[0]
        job_data = data
        chain = []
    else:
        raise PayloadError("not a Laravel job payload (no data.command and no job)")

    display = payload.get("displayName")
    fot = payload.get("failOnTimeout")
    backoff = payload.get("backoff")
    return DecodedJob(
        payload=payload,
        class_name=class_name,
        display_name=display if isinstance(display, str) else None,
        command=command,
        data=job_data,
        chain=chain,
        uuid=payload.get("uuid"),
        id=payload.get("id"),
        max_tries=_int_or_none(payload.get("maxTries")),
        max_exceptions=_int_or_none(payload.get("maxExceptions")),
        backoff=None if backoff is None else str(backoff) if not isinstance(backoff, str) else backoff,
        timeout=_int_or_none(payload.get("timeout")),
        retry_until=_int_or_none(payload.get("retryUntil")),
        fail_on_timeout=bool(fot) if fot is not None else False,
        attempts=attempts_from_headers(headers),
        encrypted=encrypted,
        connection=command.get("connection") if command else None,
        queue=command.get("queue") if command else None,
        delay=command.get("delay") if command else None,
        chain_connection=command.get("chainConnection") if command else None,
        chain_queue=command.get("chainQueue") if command else None,
        chain_catch_callbacks=command.get("chainCatchCallbacks") if command else None,
        body=raw,
        data_property=data_property,
    )


def _key_bytes(k: str | bytes | None) -> bytes | None:
    if not k:
        return None
    if isinstance(k, bytes) and len(k) in (16, 32) and not k.startswith(b"base64:"):
        return k
    return crypto.parse_app_key(k)


# --------------------------------------------------------------------------------------------
# build


def make_command(
    job_class: str | JobClass,
    data: Any,
    *,
    profile: str | Profile | None = None,
    classes: Mapping[str, JobClass] | None = None,
    **queueable: Any,
) -> PhpObject:
    """``new Class($data)`` with the given Queueable props set (``queue=``, ``chainQueue=``, ``chained=``...)."""
    jc = _job_class(job_class, classes)
    obj = PhpObject(jc.name)
    for name, v in jc.declared_props():
        obj.set(name, v)
    obj.set(jc.data_property, data, jc.data_vis())
    for name, v in queueable.items():
        obj.set(name, v)
    return normalize_command(obj, profile, jc)


def normalize_command(obj: PhpObject, profile: str | Profile | None = None,
                      job_class: JobClass | None = None) -> PhpObject:
    """Lay out a job object as PHP's serialize() would for ``profile``.

    Own properties keep their order; then ``job`` (InteractsWithQueue); then the Queueable
    properties in the profile's declaration order. With ``omit_defaults`` (SerializesModels >= 9.4)
    Queueable/trait properties equal to their default are left out, and so are class-level
    ``tries``/``timeout``/... equal to the :class:`JobClass` defaults.
    """
    prof = get_profile(profile)
    known = set(_Q_L13) | set(TRAIT_PROPS)
    out = PhpObject(obj.class_name)
    class_defaults = dict(job_class.declared_props()) if job_class else {}
    for name, v in obj.props.items():
        if name in known:
            continue
        if prof.omit_defaults and name in class_defaults and class_defaults[name] == v and type(class_defaults[name]) is type(v):
            continue
        out.props[name] = v
        if name in obj.visibility:
            out.visibility[name] = obj.visibility[name]
    if not prof.omit_defaults:
        # a full layout writes every declared class property
        for name, v in class_defaults.items():
            if name not in out.props and name not in obj.props:
                out.props[name] = v
    order = TRAIT_PROPS + prof.queueable
    extra = [n for n in obj.props if n in known and n not in order]
    for name in order + tuple(extra):
        default = QUEUEABLE_DEFAULTS.get(name)
        v = obj.props.get(name, default)
        if (prof.omit_defaults or name in extra) and v == default and type(v) is type(default):
            continue
        out.props[name] = v
        if name in obj.visibility:
            out.visibility[name] = obj.visibility[name]
    return out


def _php_str(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else ""
    if v is None:
        return ""
    if isinstance(v, float):
        return format_php_float(v)
    return str(v)


def _backoff_value(v: Any) -> str | None:
    """``getJobBackoff``: the property/method wrapped in a collection and imploded with ','."""
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return ",".join(_php_str(x) for x in v)
    if isinstance(v, dict):
        return ",".join(_php_str(x) for x in v.values())
    return _php_str(v)


def payload_for_command(
    command: PhpObject,
    *,
    job_class: JobClass | None = None,
    profile: str | Profile | None = None,
    app_key: str | bytes | None = None,
    encrypt: bool | None = None,
    gcm: bool = False,
    uuid: str | None = None,
    message_id: str | None = None,
    created_at: int | None = None,
    display_name: str | None = None,
    attempts: int = 0,
) -> OutgoingMessage:
    """``RabbitMQQueue::push($command)``: the body + properties for an already laid-out command."""
    prof = get_profile(profile)
    jc = job_class or JobClass(command.class_name)

    def prop(name: str, default: Any) -> Any:
        # `$job->tries ?? null`: the object's value if set, else the class default
        v = command.get(name)
        return v if v is not None else default

    backoff = _backoff_value(prop("backoff", jc.backoff))
    serialized = dumps(command)
    should_encrypt = jc.encrypted if encrypt is None else encrypt
    if should_encrypt:
        key = _key_bytes(app_key)
        if key is None:
            raise crypto.MissingAppKeyError("this job must be encrypted; set APP_KEY")
        cmd_str: str = crypto.encrypt(dumps(serialized), key, gcm=gcm)
    else:
        try:
            cmd_str = serialized.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("the command contains invalid UTF-8; json_encode would fail") from None

    payload: dict[str, Any] = {
        "uuid": uuid or str(uuidlib.uuid4()),
        "displayName": display_name or command.class_name,
        "job": CALL_QUEUED_HANDLER,
        "maxTries": prop("tries", jc.tries),
        "maxExceptions": prop("maxExceptions", jc.max_exceptions),
        "failOnTimeout": bool(prop("failOnTimeout", jc.fail_on_timeout) or False),
        "backoff": backoff,
        "timeout": prop("timeout", jc.timeout),
        "retryUntil": prop("retryUntil", jc.retry_until),
    }
    if prof.delete_when_missing_models:
        payload["deleteWhenMissingModels"] = bool(prop("deleteWhenMissingModels", jc.delete_when_missing_models) or False)
    payload["data"] = {"commandName": command.class_name, "command": cmd_str}
    if prof.batch_id:
        payload["data"]["batchId"] = command.get("batchId")
    if prof.created_at:
        payload["createdAt"] = int(time.time()) if created_at is None else created_at
    payload["id"] = message_id or str(uuidlib.uuid4())
    if prof.delay_key:
        payload["delay"] = None
    return message_from_payload(payload, attempts=attempts, command=command)


def message_properties(attempts: int, correlation_id: Any = None) -> dict[str, Any]:
    """The driver's AMQP properties (``createMessage``): JSON, persistent, the payload id as
    correlation id, and the attempts in the ``laravel`` header."""
    props: dict[str, Any] = {"content_type": "application/json", "delivery_mode": 2}
    if correlation_id is not None:
        props["correlation_id"] = correlation_id
    props["headers"] = {"laravel": {"attempts": int(attempts)}}
    return props


def message_from_payload(payload: Mapping, *, attempts: int = 0, command: PhpObject | None = None) -> OutgoingMessage:
    """Encode a payload dict as the RabbitMQ driver publishes it (``pushRaw``/``createMessage``)."""
    try:
        body = php_json_encode(payload, unescaped_unicode=True).encode("utf-8")
    except PhpJsonError as e:
        raise PayloadError(f"cannot json_encode payload: {e}") from None
    props = message_properties(attempts, payload.get("id"))
    queue = command.get("queue") if command else None
    conn = command.get("connection") if command else None
    delay = command.get("delay") if command else None
    return OutgoingMessage(body, props, queue if isinstance(queue, str) else None,
                           conn if isinstance(conn, str) else None, delay, dict(payload), command)


def build_payload(
    job_class: str | JobClass,
    data: Any,
    *,
    queue: str | None = None,
    connection: str | None = None,
    profile: str | Profile | None = None,
    classes: Mapping[str, JobClass] | None = None,
    app_key: str | bytes | None = None,
    **kw: Any,
) -> OutgoingMessage:
    """``Class::dispatch($data)->onQueue($queue)``: a fresh job (no chain)."""
    jc = _job_class(job_class, classes)
    q: dict[str, Any] = {}
    if connection is not None:
        q["connection"] = connection
    if queue is not None:
        q["queue"] = queue
    cmd = make_command(jc, data, profile=profile, **q)
    return payload_for_command(cmd, job_class=jc, profile=profile, app_key=app_key, **kw)


def build_chain_payload(
    jobs: Sequence[tuple[str | JobClass, Any]],
    *,
    queue: str | None = None,
    connection: str | None = None,
    profile: str | Profile | None = None,
    classes: Mapping[str, JobClass] | None = None,
    app_key: str | bytes | None = None,
    **kw: Any,
) -> OutgoingMessage:
    """``Bus::chain([new A($d), new B($d), ...])->onConnection($c)->onQueue($q)->dispatch()``."""
    if not jobs:
        raise PayloadError("an empty chain dispatches nothing")
    prof = get_profile(profile)
    rest = [dumps(make_command(c, d, profile=prof, classes=classes)).decode("utf-8", "surrogateescape")
            for c, d in jobs[1:]]
    first_cls = _job_class(jobs[0][0], classes)
    q: dict[str, Any] = {}
    if connection:
        q["chainConnection"] = connection
        q["connection"] = connection
    if queue:
        q["chainQueue"] = queue
        q["queue"] = queue
    q["chained"] = rest
    q["chainCatchCallbacks"] = []
    cmd = make_command(first_cls, jobs[0][1], profile=prof, **q)
    return payload_for_command(cmd, job_class=first_cls, profile=prof, app_key=app_key, **kw)


def infer_profile(job: DecodedJob, default: str | Profile | None = None) -> Profile:
    """Guess the Laravel layout that produced ``job`` (so a continuation is written the same way)."""
    p = job.payload
    cmd = job.command
    if "deleteWhenMissingModels" in p:
        return PROFILES["laravel13"]
    if "createdAt" in p or "delay" in p:
        return PROFILES["laravel12"]
    if cmd is not None:
        names = list(cmd.props)
        if "debounceOwner" in names or "uniqueLockOwner" in names:
            return PROFILES["laravel13"]
        if "messageGroup" in names or "deduplicator" in names:
            return PROFILES["laravel12"]
        full = "middleware" in names or "job" in names
        order_l11 = None
        pairs = [("chained", "chainQueue"), ("chained", "chainConnection"), ("chained", "chainCatchCallbacks"),
                 ("delay", "chainQueue"), ("delay", "chainConnection"), ("delay", "chainCatchCallbacks"),
                 ("middleware", "chainCatchCallbacks"), ("afterCommit", "chainCatchCallbacks")]
        for a, b in pairs:
            if a in names and b in names:
                order_l11 = names.index(a) < names.index(b)
                break
        if full:
            if order_l11:
                return Profile("laravel11-plain", _Q_L11, omit_defaults=False)
            return PROFILES["laravel8"]
        if order_l11 is True:
            return PROFILES["laravel11"]
        if order_l11 is False:
            return PROFILES["laravel10"]
    return get_profile(default)


def next_chain_message(
    job: DecodedJob,
    *,
    profile: str | Profile | None = None,
    classes: Mapping[str, JobClass] | None = None,
    app_key: str | bytes | None = None,
    **kw: Any,
) -> OutgoingMessage | None:
    """``Queueable::dispatchNextJobInChain()``: the next job's message, or None at the chain's end.

    ``profile`` defaults to the one inferred from ``job`` (see :func:`infer_profile`).
    """
    if job.command is None or not job.chain:
        return None
    prof = get_profile(profile) if profile is not None else infer_profile(job)
    this = job.command
    nxt_raw = job.chain[0].raw
    nxt = loads(nxt_raw)
    if not isinstance(nxt, PhpObject):
        raise PayloadError("the next chained job is not an object")
    rest = [c.raw for c in job.chain[1:]]
    nxt.set("chained", rest)
    nxt.set("connection", nxt.get("connection") or this.get("chainConnection"))
    nxt.set("queue", nxt.get("queue") or this.get("chainQueue"))
    nxt.set("chainConnection", this.get("chainConnection"))
    nxt.set("chainQueue", this.get("chainQueue"))
    nxt.set("chainCatchCallbacks", this.get("chainCatchCallbacks"))
    jc = _job_class(nxt.class_name, classes)
    cmd = normalize_command(nxt, prof, jc)
    return payload_for_command(cmd, job_class=jc, profile=prof, app_key=app_key, **kw)


# --------------------------------------------------------------------------------------------
# presentation


def to_jsonable(v: Any, _depth: int = 0) -> Any:
    """PHP values as JSON-friendly data (objects as ``{"__class__": ..., props...}``)."""
    from .php_serialize import PhpEnum, PhpRef

    if _depth > 200:
        return "…"
    if isinstance(v, PhpObject):
        out: dict[str, Any] = {"__class__": v.class_name}
        for k, x in v.props.items():
            vis = v.visibility_of(k)
            label = str(k) if vis == PUBLIC else f"{k} ({vis})"
            out[label] = to_jsonable(x, _depth + 1)
        return out
    if isinstance(v, PhpEnum):
        return {"__enum__": f"{v.class_name}::{v.case}"}
    if isinstance(v, PhpRef):
        return {"__ref__": f"{v.kind}:{v.index}"}
    if isinstance(v, bytes):
        return v.decode("utf-8", "backslashreplace")
    if isinstance(v, dict):
        return {str(k) if not isinstance(k, bytes) else k.decode("utf-8", "backslashreplace"): to_jsonable(x, _depth + 1)
                for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_jsonable(x, _depth + 1) for x in v]
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return format_php_float(v)
    return v


def describe(job: DecodedJob) -> dict:
    """The operator view printed by ``python -m workers inspect``."""
    known = {"uuid", "displayName", "job", "maxTries", "maxExceptions", "failOnTimeout", "backoff", "timeout",
             "retryUntil", "data", "id", "createdAt", "delay", "deleteWhenMissingModels"}
    return {
        "class": job.class_name,
        "display_name": job.display_name,
        "data": to_jsonable(job.data),
        "chain": [{"class": c.class_name, "data": to_jsonable(c.data)} for c in job.chain],
        "uuid": job.uuid,
        "id": job.id,
        "max_tries": job.max_tries,
        "max_exceptions": job.max_exceptions,
        "timeout": job.timeout,
        "backoff": job.backoff,
        "retry_until": job.retry_until,
        "fail_on_timeout": job.fail_on_timeout,
        "encrypted": job.encrypted,
        "connection": to_jsonable(job.connection),
        "queue": to_jsonable(job.queue),
        "delay": to_jsonable(job.delay),
        "chain_connection": to_jsonable(job.chain_connection),
        "chain_queue": to_jsonable(job.chain_queue),
        "created_at": job.payload.get("createdAt"),
        "command": to_jsonable(job.command) if job.command is not None else None,
        "extra": {k: v for k, v in job.payload.items() if k not in known},
    }


# keep names used in type hints importable
_ = (PROTECTED, PhpSerializeError)
