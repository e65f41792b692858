"""Security, as a user deploys cacheplug (docs/security.md): secrets never shown, anywhere an
error or a log line can carry them; a signed cache never decodes a payload that does not verify
for its secret and serializer, on every store and every reading method; the cache directory's
files and links; memoize keys of different calls never meet.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import hmac
import io
import logging
import os
import pathlib
import pickle
import secrets
import shutil
import stat
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from pymemcache.client.base import Client
from servers import MemcachedServer, RedisServer

from cacheplug import (
    BaseCache,
    ConfigurationError,
    FileSystemCache,
    JSONSerializer,
    MemcachedCache,
    MsgpackSerializer,
    PickleSerializer,
    PluginError,
    RedisCache,
    SimpleCache,
    from_url,
)
from cacheplug.backends._memcached_counters import FLAG_SERIALIZED
from cacheplug.cli import main

SECRET = "Zr9qK"  # distinctive: any piece of a URL's secrets in a text is found
SIGNING_KEY = "k3y-of-the-service"
DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "security.md"


def every_text(err: BaseException) -> str:
    """What an error can show: message, repr and args of it and of every error chained to it
    (as cause or context, shown or not), and its formatted traceback."""
    texts = ["".join(traceback.format_exception(err))]
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        stack += [current.__cause__, current.__context__]
    return "\n".join(texts)


# -- secrets in URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"simple://?secret=k3y&{SECRET}",  # a raw '&' in a secret: urllib's error showed the tail
        f"simple://?secret=k3y&{SECRET}&threshold=5",
        f"simple://?threshold=5;secret={SECRET}",  # int() of the value, kept as context
        f"simple://?default_timeout=1;secret={SECRET}",  # float() of the value, as context
        f"redis://h/0?db=1;password={SECRET}",
        f"redis://ada:{SECRET}@h:port/0",
        f"redis://ada:{SECRET}#x@h/0",
        f"redis://ada:{SECRET}?x@h/0",
        f"redis://ada:{SECRET}/x@h/0",
        f"redis://ada:{SECRET}@[::1/0",
        f"redis://:{SECRET}@h:99999/0",
        f"redis://u:{SECRET}@h/x",
        f"redis://u:{SECRET}@h,g/0",
        f"rediss://u:{SECRET}@h/0?ssl=false",
        f"redis+cluster://u:{SECRET}@h:1/3",
        f"redis+unix://u:{SECRET}@/",
        f"memcached://u:{SECRET}@h",
        f"file://:{SECRET}@/tmp/x",
        f"null://:{SECRET}@",
        f"redis://h/0?ssl_password={SECRET}&ssl_cert_reqs=bad",
        f"redis://h/0?password={SECRET}&password=x",
        f"redis://:{SECRET}@h/0?bogus=1",
        f"reddis://ada:{SECRET}@h/0",
        f"simple://?secret={SECRET}&serializer=yaml",
        f"simple://?secret={SECRET}&threshold=-1",
    ],
)
def test_url_errors_never_show_a_secret_in_their_chain_or_traceback(url: str) -> None:
    with pytest.raises((ConfigurationError, PluginError)) as info:
        from_url(url)
    assert SECRET not in every_text(info.value)


def test_a_raw_ampersand_in_a_secret_is_named_as_the_likely_fault() -> None:
    """The masked URL hides the tail of the secret that broke the query: the message alone must
    say what to fix."""
    with pytest.raises(ConfigurationError) as info:
        from_url(f"simple://?secret=k3y&{SECRET}")
    assert "percent-encode '&'" in str(info.value)
    assert "%26" in str(info.value)
    assert SECRET not in every_text(info.value)


PASSWORD = "p@ss:w/rd?#%" + SECRET  # every character a URL gives a meaning


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[RedisServer]:
    with RedisServer(password=PASSWORD) as server:
        yield server


def redis_url(server: RedisServer, password: str, query: str = "") -> str:
    return f"redis://ada:{quote(password, safe='')}@{server.host}:{server.port}/0{query}"


def test_a_percent_encoded_password_with_url_characters_logs_in(locked_redis: RedisServer) -> None:
    # requirepass is the default user's password; a user name picks an ACL user instead
    url = f"redis://:{quote(PASSWORD, safe='')}@{locked_redis.host}:{locked_redis.port}/0"
    with from_url(url) as cache:
        assert cache.set("k", "v") is True
        assert cache.get("k") == "v"
        assert PASSWORD not in repr(cache) and SECRET not in str(cache)


def run_cli(*argv: str) -> tuple[int, str]:
    """Exit status and everything ``cacheplug`` printed, log lines included."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("cacheplug")
    logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            status = main(list(argv))
    finally:
        logger.removeHandler(handler)
    return status, out.getvalue()


def test_refused_login_shows_no_password_in_errors_logs_or_the_command(
    locked_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = redis_url(locked_redis, "x" + PASSWORD)
    with caplog.at_level(logging.DEBUG), from_url(wrong) as cache:
        assert cache.set("k", 1) is False
        assert cache.get("k") is None
    with pytest.raises(RuntimeError) as info:
        RedisCache(
            locked_redis.host, locked_redis.port, password=PASSWORD[1:], check_connection=True
        )
    texts = [every_text(info.value)]
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.args)]
    for command in ("check", "demo"):
        status, shown = run_cli(command, wrong)
        assert status == 1
        assert "refused the login" in shown
        texts.append(shown)
    for text in texts:
        for piece in (SECRET, quote(PASSWORD, safe="")):
            assert piece not in text


def test_the_command_shows_no_secret_of_a_working_signed_cache(locked_redis: RedisServer) -> None:
    query = f"?secret={quote(PASSWORD, safe='')}"
    url = f"redis://:{quote(PASSWORD, safe='')}@{locked_redis.host}:{locked_redis.port}/0{query}"
    for argv in (("check", url), ("demo", url, "--keys", "2", "--rounds", "2", "--delay-ms", "0")):
        status, shown = run_cli(*argv)
        assert status == 0, shown
        assert "signed=True" in shown
        assert SECRET not in shown and quote(PASSWORD, safe="") not in shown


def test_secret_from_the_environment_is_never_shown(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CACHEPLUG_SECRET", SECRET)
    cache = SimpleCache()
    cache.set("k", pickle.dumps)  # a function, pickled by reference: signed
    with caplog.at_level(logging.DEBUG):
        cache.serializer = type(cache.serializer)()  # another pickle object: the same MAC
        assert cache.get("k") is pickle.dumps
    status, shown = run_cli("demo", "simple://", "--keys", "1", "--rounds", "1", "--delay-ms", "0")
    assert status == 0
    assert "signed=True" in shown
    assert SECRET not in shown + repr(cache) + caplog.text


# -- signed payloads: forged entries never run ---------------------------------------------------


@dataclass(frozen=True)
class Marker:
    """Unpickling it creates a file: proof that a payload reached ``pickle.loads``."""

    path: pathlib.Path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.path,))


def signed(data: bytes, key: str, prefix: str = "", secret: str = SIGNING_KEY) -> bytes:
    """``data`` as a cache with ``secret``, ``key_prefix=prefix`` and the pickle serializer
    stores it for ``key``: the MAC covers the prefix and the key, each after its length."""
    entry = b"cacheplug-entry:%d:%d:" % (len(prefix.encode()), len(key.encode()))
    message = entry + prefix.encode() + key.encode() + data
    return b"\xc1\xff" + hmac.digest(secret.encode(), message, hashlib.sha256) + data


@dataclass
class Store:
    """A real store, its caches, and a way to write raw payloads into it as a cache would."""

    name: str
    make: Callable[..., BaseCache]
    forge: Callable[[BaseCache, str, bytes], None]
    #: copies the stored entry of one key over another's, as anyone who can write the store can
    copy: Callable[[BaseCache, str, str], None]
    prefix: str = ""


def _forge_redis(raw: redis.Redis, prefix: str) -> Callable[[BaseCache, str, bytes], None]:
    def forge(cache: BaseCache, key: str, payload: bytes) -> None:
        raw.set(prefix + key, payload)

    return forge


def _copy_redis(raw: redis.Redis, prefix: str) -> Callable[[BaseCache, str, str], None]:
    def copy(cache: BaseCache, source: str, target: str) -> None:
        assert raw.copy(prefix + source, prefix + target, replace=True)

    return copy


def _forge_memcached(raw: Client) -> Callable[[BaseCache, str, bytes], None]:
    def forge(cache: BaseCache, key: str, payload: bytes) -> None:
        assert raw.set(key, payload, flags=FLAG_SERIALIZED) is True

    return forge


class WithFlags:
    """A pymemcache serde that hands out and takes ``(data, flags)``: entries copied whole."""

    def serialize(self, key: str, value: tuple[bytes, int]) -> tuple[bytes, int]:
        return value

    def deserialize(self, key: str, value: bytes, flags: int) -> tuple[bytes, int]:
        return value, flags


def _copy_memcached(address: tuple[str, int]) -> Callable[[BaseCache, str, str], None]:
    raw = Client(address, serde=WithFlags(), default_noreply=False)

    def copy(cache: BaseCache, source: str, target: str) -> None:
        assert raw.set(target, raw.get(source)) is True

    return copy


def _forge_file(directory: pathlib.Path) -> Callable[[BaseCache, str, bytes], None]:
    def forge(cache: BaseCache, key: str, payload: bytes) -> None:
        # the entry file a set makes for key, its payload replaced (header: magic and expiry)
        cache.delete(key)
        before = set(directory.glob("cp-*"))
        assert cache.set(key, "placeholder", 0) is True
        (entry,) = set(directory.glob("cp-*")) - before
        entry.write_bytes(entry.read_bytes()[:12] + payload)

    return forge


def _copy_file(cache: BaseCache, source: str, target: str) -> None:
    assert isinstance(cache, FileSystemCache)
    shutil.copyfile(cache._path(source), cache._path(target))


@pytest.fixture(params=["redis", "memcached", "file"])
def store(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    monkeypatch.delenv("CACHEPLUG_SECRET", raising=False)
    made: list[BaseCache] = []
    prefix = ""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        prefix = f"security-{secrets.token_hex(4)}:"
        raw = redis.Redis(port=server.port)

        def make(**options: Any) -> BaseCache:
            return RedisCache(port=server.port, key_prefix=prefix, **options)

        forge, copy = _forge_redis(raw, prefix), _copy_redis(raw, prefix)
    elif request.param == "memcached":
        memcached: MemcachedServer = request.getfixturevalue("memcached_server")
        memcached.flush()
        raw_mc = Client(memcached.address, default_noreply=False)

        def make(**options: Any) -> BaseCache:
            return MemcachedCache([f"{memcached.host}:{memcached.port}"], **options)

        forge, copy = _forge_memcached(raw_mc), _copy_memcached(memcached.address)
    else:

        def make(**options: Any) -> BaseCache:
            return FileSystemCache(tmp_path / "store", **options)

        forge, copy = _forge_file(tmp_path / "store"), _copy_file

    def tracked(**options: Any) -> BaseCache:
        cache = make(**options)
        made.append(cache)
        return cache

    yield Store(request.param, tracked, forge, copy, prefix)
    for cache in made:
        cache.clear()
        cache.close()


def reads_of(cache: BaseCache, key: str, marker: pathlib.Path) -> dict[str, Any]:
    """What every reading method answers for ``key``; none may unpickle a forged payload."""
    answers: dict[str, Any] = {
        "get": cache.get(key),
        "get_many": cache.get_many(key, "missing"),
        "get_dict": cache.get_dict(key),
        "has": cache.has(key),
    }
    try:
        answers["inc"] = cache.inc(key)
    except TypeError:
        answers["inc"] = TypeError
    assert not marker.exists(), "a forged payload was unpickled"
    return answers


def test_a_forged_pickle_never_runs_on_a_signed_cache(store: Store, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Marker(marker))
    cache = store.make(secret=SIGNING_KEY)
    genuine = signed(pickle.dumps({"amount": 10}), "evil", store.prefix)
    forgeries = {
        "unsigned": evil,
        "signed with another secret": signed(evil, "evil", store.prefix, "another-secret"),
        "signed for another key": signed(evil, "evil2", store.prefix),
        "signed for another key_prefix": signed(evil, "evil", store.prefix + "other:"),
        "a valid signature on other bytes": genuine[:32] + evil,
        "tampered": genuine[:-2] + bytes([genuine[-2] ^ 1]) + genuine[-1:],
        "truncated": genuine[:40],
        "signature only": genuine[:32],
        "shorter than a signature": genuine[:7],
        "empty": b"",
    }
    errors = cache.stats()["errors"]
    for name, payload in forgeries.items():
        store.forge(cache, "evil", payload)
        answers = reads_of(cache, "evil", marker)
        assert answers["get"] is None, name
        assert answers["get_many"] == [None, None], name
        assert answers["get_dict"] == {"evil": None}, name
        assert answers["inc"] is TypeError, name  # unreadable: no counter...
        assert answers["has"] is True and cache.has("evil") is True, name  # ...and it stays
        store.forge(cache, "evil", payload)
        assert cache.get_or_set("evil", lambda: "fresh", 60) == "fresh", name
    assert cache.stats()["errors"] > errors

    @cache.memoize(timeout=60)
    def balance(user: str) -> int:
        return len(user)

    store.forge(cache, balance.cache_key("ada"), evil)
    assert balance("ada") == 3
    assert not marker.exists()
    # The same bytes do run where nothing verifies them: the forgery above is a real threat.
    store.forge(cache, "evil", evil)
    store.make(secret=None).get("evil")
    assert marker.exists()


def test_a_genuine_signed_payload_still_reads(store: Store) -> None:
    cache = store.make(secret=SIGNING_KEY)
    store.forge(cache, "ours", signed(pickle.dumps({"amount": 10}), "ours", store.prefix))
    assert cache.get("ours") == {"amount": 10}


#: Keys whose MAC (secret "s3cr3t", key_prefix "signed-elsewhere:", value SIGNED_ELSEWHERE)
#: happens to start with bytes that pickle reads: before signed payloads carried a mark, a
#: cache without the secret answered set(), {}, a 500-digit int and a float for them.
PICKLE_SHAPED_MACS = ["user:9303", "user:10081", "user:16242", "user:22314"]
SIGNED_ELSEWHERE = {"role": "user", "id": 42}


@pytest.mark.parametrize("engine", ["redis", "memcached", "file"])
def test_a_cache_without_the_secret_reads_signed_entries_as_misses(
    engine: str,
    request: pytest.FixtureRequest,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A process not given the secret yet (a rolling deploy adding CACHEPLUG_SECRET) reads
    what signed processes wrote as misses, never as whatever the MAC's bytes decode to."""
    monkeypatch.delenv("CACHEPLUG_SECRET", raising=False)
    options: dict[str, Any] = {"key_prefix": "signed-elsewhere:"}
    cls: Callable[..., BaseCache]
    if engine == "redis":
        cls, options["port"] = RedisCache, request.getfixturevalue("redis_server").port
    elif engine == "memcached":
        server: MemcachedServer = request.getfixturevalue("memcached_server")
        server.flush()
        cls, options["servers"] = MemcachedCache, [f"{server.host}:{server.port}"]
    else:
        cls, options["cache_dir"] = FileSystemCache, tmp_path / "c"
    keys = [*PICKLE_SHAPED_MACS, "user:1", "user:2"]
    with cls(**options, secret="s3cr3t") as signing, cls(**options) as unsigned:
        assert signing.set_many(dict.fromkeys(keys, SIGNED_ELSEWHERE)) == keys
        assert signing.get_many(*keys) == [SIGNED_ELSEWHERE] * len(keys)
        caplog.set_level(logging.WARNING, logger="cacheplug")
        assert unsigned.get_many(*keys) == [None] * len(keys)
        assert [unsigned.get(key) for key in keys] == [None] * len(keys)
        assert unsigned.get_dict(*keys) == dict.fromkeys(keys)
        assert unsigned.stats()["errors"] >= 3 * len(keys)
        assert "has no secret" in caplog.text
        for key in keys:  # the signed process keeps reading its entries
            assert signing.get(key) == SIGNED_ELSEWHERE
        signing.clear()


def test_a_genuine_entry_copied_to_another_key_is_a_miss(
    store: Store, tmp_path: pathlib.Path
) -> None:
    """Whoever can write the store cannot give user 1 the role stored for user 2."""
    cache = store.make(secret=SIGNING_KEY)
    assert cache.set_many({"role:1": "reader", "role:2": {"role": "admin"}}) == ["role:1", "role:2"]
    assert cache.get("role:2") == {"role": "admin"}
    store.copy(cache, "role:2", "role:1")
    answers = reads_of(cache, "role:1", tmp_path / "pwned")
    assert answers["get"] is None
    assert answers["get_many"] == [None, None]
    assert answers["get_dict"] == {"role:1": None}
    assert answers["inc"] is TypeError
    assert cache.get_many("role:1", "role:2") == [None, {"role": "admin"}]
    # the same copy between two keys of an unsigned cache reads as the copied value
    unsigned = store.make(secret=None)
    unsigned.set("role:2", {"role": "admin"})
    store.copy(unsigned, "role:2", "role:1")
    assert unsigned.get("role:1") == {"role": "admin"}


def profile_of(text: str) -> dict[str, Any]:
    """A user's profile with 10 fields: msgpack starts it with 0x8a, pickle's LONG1 opcode, which
    swallows the next 0xa1 bytes (field name, the str16 header of its text and 157 characters),
    so pickle reads on from ``text``; what follows pickle's STOP is ignored."""
    profile: dict[str, Any] = {"a": "A" * 157 + text.ljust(256, "B")}
    profile.update((f"field{n}", n) for n in range(9))
    return profile


def test_a_value_signed_through_another_serializer_never_verifies(
    store: Store, tmp_path: pathlib.Path
) -> None:
    """A deployment switching serializers runs both against one store with one secret. The
    msgpack bytes of a profile whose text a user chose unpickled to a call of os.system."""
    marker = tmp_path / "pwned"
    gadget = f"cposix\nsystem\n(S'touch {marker}'\ntR."
    writer = store.make(secret=SIGNING_KEY, serializer="msgpack")
    assert writer.set("profile", profile_of(gadget)) is True
    assert writer.get("profile") == profile_of(gadget)
    reader = store.make(secret=SIGNING_KEY)  # pickle
    assert reads_of(reader, "profile", marker)["get"] is None
    for serializer in ("json", "msgpack"):
        assert store.make(secret=SIGNING_KEY, serializer=serializer).set("value", [1, "x"])
        assert reader.get("value") is None
        other = "json" if serializer == "msgpack" else "msgpack"
        assert store.make(secret=SIGNING_KEY, serializer=other).get("value") is None
    assert not marker.exists()
    # without a secret nothing tells them apart: docs/security.md says so
    store.make(serializer="msgpack").set("profile", profile_of(gadget))
    store.make().get("profile")
    assert marker.exists()
    assert "same serializer" in DOCS.read_text()


def test_a_reassigned_serializer_signs_and_verifies_for_itself(tmp_path: pathlib.Path) -> None:
    """``serializer`` is reassignable (as in cachelib): the MAC follows it."""
    marker = tmp_path / "pwned"
    cache = FileSystemCache(tmp_path / "store", secret=SIGNING_KEY, serializer="msgpack")
    assert cache.set("k", [1, 2]) is True
    cache.serializer = MsgpackSerializer()  # another object of the same serializer
    assert cache.get("k") == [1, 2]
    cache.serializer = JSONSerializer()
    assert cache.get("k") is None
    assert cache.set("j", [3]) is True
    assert FileSystemCache(tmp_path / "store", secret=SIGNING_KEY, serializer="json").get("j") == [
        3
    ]
    pickled = FileSystemCache(tmp_path / "store", secret=SIGNING_KEY)
    assert pickled.get("j") is None
    was_pickle = FileSystemCache(tmp_path / "store", secret=SIGNING_KEY)
    was_pickle.serializer = MsgpackSerializer()
    was_pickle.set("profile", profile_of(f"cposix\nsystem\n(S'touch {marker}'\ntR."))
    assert pickled.get("profile") is None
    assert not marker.exists()


def _foreign_serializer(module: str, encode: Any, decode: Any) -> Any:
    """An object of a class ``Serializer`` of ``module``, without a ``name``."""

    class Serializer:
        def dumps(self, value: Any) -> bytes:
            return bytes(encode(value))

        def loads(self, data: bytes) -> Any:
            return decode(data)

    Serializer.__module__ = module
    return Serializer()


def test_foreign_serializers_with_one_class_name_sign_apart(tmp_path: pathlib.Path) -> None:
    """Two user classes both called ``Serializer`` (one msgpack, one pickle) are still two
    serializers to the MAC: the module and class name it, not the bare class name."""
    import msgpack

    marker = tmp_path / "pwned"
    writer = FileSystemCache(tmp_path / "store", secret=SIGNING_KEY)
    writer.serializer = _foreign_serializer("app.codecs.fast", msgpack.packb, msgpack.unpackb)
    assert writer.set("profile", profile_of(f"cposix\nsystem\n(S'touch {marker}'\ntR.")) is True
    reader = FileSystemCache(tmp_path / "store", secret=SIGNING_KEY)
    reader.serializer = _foreign_serializer("app.codecs.safe", pickle.dumps, pickle.loads)
    assert reader.get("profile") is None
    assert not marker.exists()


def test_a_copied_cache_signs_for_its_own_serializer_and_outlives_the_original(
    tmp_path: pathlib.Path,
) -> None:
    """A copy shares the original's signer: it must name the copy's serializer, and must not
    depend on the original staying alive."""
    marker = tmp_path / "pwned"
    original = FileSystemCache(tmp_path / "store", secret=SIGNING_KEY)
    variant = copy.copy(original)
    variant.serializer = MsgpackSerializer()
    assert variant.set("profile", profile_of(f"cposix\nsystem\n(S'touch {marker}'\ntR."))
    assert original.get("profile") is None
    assert not marker.exists()
    del original
    gc.collect()
    assert variant.set("k", [1, 2]) is True
    assert variant.get("k") == [1, 2]


class Switching(FileSystemCache):
    """A cache whose ``serializer`` turns from msgpack to pickle after ``reads`` reads of it, as
    another thread reassigning it in the middle of a call would."""

    def __init__(self, cache_dir: pathlib.Path, reads: int) -> None:
        self.switched: list[Any] = [MsgpackSerializer()]
        super().__init__(cache_dir, secret=SIGNING_KEY)
        self.switched = [MsgpackSerializer()] * reads + [PickleSerializer()]

    @property
    def serializer(self) -> Any:  # type: ignore[override]
        return self.switched.pop(0) if len(self.switched) > 1 else self.switched[0]


@pytest.mark.parametrize("reads", [1, 2, 3])
def test_a_serializer_switched_in_the_middle_of_a_call_never_lets_msgpack_bytes_unpickle(
    tmp_path: pathlib.Path, reads: int
) -> None:
    """The serializer that encodes is the one the MAC names; the one verified is the one that
    decodes."""
    marker = tmp_path / "pwned"
    gadget = profile_of(f"cposix\nsystem\n(S'touch {marker}'\ntR.")
    assert Switching(tmp_path / "store", reads).set("written", gadget) is True
    assert FileSystemCache(tmp_path / "store", secret=SIGNING_KEY).get("written") is None
    msgpack_writer = FileSystemCache(tmp_path / "store", secret=SIGNING_KEY, serializer="msgpack")
    assert msgpack_writer.set("read", gadget) is True
    assert Switching(tmp_path / "store", reads).get("read") in (None, gadget)
    assert not marker.exists()


# -- the cache directory ---------------------------------------------------------------------------


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: pathlib.Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize(("mode", "directories"), [(None, 0o700), (0o640, 0o750), (0o660, 0o770)])
def test_directories_it_creates_let_in_only_whom_mode_lets_read_whatever_the_umask(
    tmp_path: pathlib.Path, mode: int | None, directories: int
) -> None:
    """With umask 0 they were 0o777: any local user could plant an entry that unpickles."""
    for mask in (0, 0o022):
        top = tmp_path / f"umask{mask}"
        with umask(mask):
            cache = FileSystemCache(top / "app" / "cache", mode=mode)
            assert cache.set("k", 1) is True
        assert mode_of(top / "app") == directories
        assert mode_of(top / "app" / "cache") == directories
        files = {mode_of(path) for path in (top / "app" / "cache").iterdir()}
        assert files == {mode or 0o600}  # the entry and the lock file


def test_parents_of_a_removed_directory_come_back_as_they_were_made(
    tmp_path: pathlib.Path,
) -> None:
    cache = FileSystemCache(tmp_path / "app" / "cache")
    cache.set("k", 1)
    for directory in (tmp_path / "app" / "cache", tmp_path / "app"):
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()
    with umask(0):
        assert cache.set("k", 2) is True
    assert mode_of(tmp_path / "app") == 0o700
    assert cache.get("k") == 2


def test_an_existing_directory_keeps_its_mode(tmp_path: pathlib.Path) -> None:
    tmp_path.chmod(0o755)
    FileSystemCache(tmp_path).set("k", 1)
    assert mode_of(tmp_path) == 0o755


@pytest.fixture
def planted(tmp_path: pathlib.Path) -> tuple[FileSystemCache, pathlib.Path, pathlib.Path]:
    """A cache, the path of its entry for "k", and a file outside the directory."""
    directory = tmp_path / "cache"
    cache = FileSystemCache(directory, secret=None)
    before = set(directory.iterdir())
    cache.set("k", "ours")
    (entry,) = set(directory.iterdir()) - before - {*directory.glob(".cacheplug-*.lock")}
    outside = tmp_path / "outside"
    outside.write_bytes(entry.read_bytes()[:12] + pickle.dumps("planted"))  # a valid entry
    entry.unlink()
    return cache, entry, outside


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_a_link_planted_at_an_entry_never_reaches_outside(
    planted: tuple[FileSystemCache, pathlib.Path, pathlib.Path], link: str
) -> None:
    cache, entry, outside = planted
    content = outside.read_bytes()

    def plant() -> None:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
        (entry.symlink_to if link == "symlink" else entry.hardlink_to)(outside)

    plant()
    if link == "symlink":  # never followed: a symlink is no entry
        assert cache.get("k") is None
        assert cache.has("k") is False
    assert cache.set("k", "new") is True
    assert cache.get("k") == "new"
    assert not entry.is_symlink()
    plant()
    cache.delete("k")
    assert not entry.exists() and not entry.is_symlink()
    plant()
    assert cache.clear() is True
    assert not entry.exists() and not entry.is_symlink()
    assert outside.read_bytes() == content


def test_a_symlink_planted_at_the_lock_file_is_dropped_not_written_through(
    planted: tuple[FileSystemCache, pathlib.Path, pathlib.Path],
) -> None:
    cache, entry, outside = planted
    content = outside.read_bytes()
    (lock,) = entry.parent.glob(".cacheplug-*.lock")
    lock.unlink()
    lock.symlink_to(outside)
    assert cache.set("k", 1) is True
    assert cache.inc("n") == 1
    assert not lock.is_symlink()
    assert outside.read_bytes() == content


def test_a_world_writable_directory_cannot_make_a_signed_cache_unpickle(
    tmp_path: pathlib.Path,
) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o1777)
    cache = FileSystemCache(directory, secret=SIGNING_KEY)
    marker = tmp_path / "pwned"
    _forge_file(directory)(cache, "k", pickle.dumps(Marker(marker)))
    assert cache.get("k") is None
    assert not marker.exists()


# -- memoize keys ----------------------------------------------------------------------------------

_TEXT = st.text(alphabet="ab'\",:()[]{}\\ =~-_0", max_size=8)
_ARGUMENT = st.one_of(
    _TEXT,
    st.integers(-3, 3),
    st.booleans(),
    st.none(),
    st.binary(max_size=3),
    st.floats(allow_nan=False, width=16),
    st.tuples(_TEXT, st.integers(-2, 2)),
    st.lists(_TEXT, max_size=2),
    st.frozensets(_TEXT, max_size=2),
    st.dictionaries(_TEXT, st.integers(0, 2), max_size=2),
)


def _canonical(value: object) -> object:
    """``value`` as memoize must tell it apart: by type and content (equal sets/dicts are one)."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_canonical(item) for item in value))
    if isinstance(value, frozenset):
        return ("frozenset", frozenset(_canonical(item) for item in value))
    if isinstance(value, dict):
        return ("dict", frozenset((k, _canonical(v)) for k, v in value.items()))
    if isinstance(value, float) and value == 0:
        return ("float", str(value))  # -0.0 and 0.0: two reprs, two keys
    return (type(value).__name__, value)


_memo_cache = SimpleCache()


@_memo_cache.memoize(timeout=60)
def _lookup(user: Any, *rest: Any, scope: Any = "", **extra: Any) -> None:
    return None


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_ARGUMENT, min_size=1, max_size=3),
    st.lists(_ARGUMENT, min_size=1, max_size=3),
    st.dictionaries(st.sampled_from(["scope", "x", "user_"]), _ARGUMENT, max_size=2),
    st.dictionaries(st.sampled_from(["scope", "x", "user_"]), _ARGUMENT, max_size=2),
)
def test_memoize_keys_of_different_calls_never_meet(
    first: list[Any], second: list[Any], first_kw: dict[str, Any], second_kw: dict[str, Any]
) -> None:
    """Arguments holding quotes, commas, brackets or the key's separators cannot make one
    user's call answer another's."""
    one = ([_canonical(v) for v in first], {k: _canonical(v) for k, v in first_kw.items()})
    two = ([_canonical(v) for v in second], {k: _canonical(v) for k, v in second_kw.items()})
    one[1].setdefault("scope", _canonical(""))
    two[1].setdefault("scope", _canonical(""))
    same_call = one == two
    same_key = _lookup.cache_key(*first, **first_kw) == _lookup.cache_key(*second, **second_kw)
    assert same_key == same_call
