"""The demo app of stack 3: writes through the HAProxy write port (the Patroni
leader), reads through the read port (a replica), caches reads in Redis.

Configured only by environment (rigger writes it): DATABASE_URL,
DATABASE_READ_URL, REDIS_URL, APP_HOST.
"""

import json
import os
import socket
import threading

import psycopg2
import redis
from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel

HOST = os.environ.get("APP_HOST") or socket.gethostname()
WRITE_URL = os.environ["DATABASE_URL"]
READ_URL = os.environ["DATABASE_READ_URL"]
CACHE_TTL = int(os.environ.get("CACHE_TTL", "60"))

cache = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=2, socket_connect_timeout=2)
app = FastAPI(title="rigger demo app")

_schema_ready = False
_schema_lock = threading.Lock()

# Which server answered and whether it is a replica: proves where a query went.
WHO = "select inet_server_addr()::text, pg_is_in_recovery()"


def connect(url):
    # A connection per request: after a failover the next request simply
    # reaches the new leader through HAProxy, no stale pool to drain.
    return psycopg2.connect(url, connect_timeout=3, application_name=f"demo-app@{HOST}")


def ensure_schema():
    global _schema_ready
    if _schema_ready:
        return
    with _schema_lock:
        if _schema_ready:
            return
        conn = connect(WRITE_URL)
        try:
            with conn, conn.cursor() as cur:
                # Three apps may start at once: serialise the DDL.
                cur.execute("select pg_advisory_xact_lock(7301)")
                cur.execute("create table if not exists items (id bigserial primary key, text text not null, written_by text not null, created_at timestamptz not null default now())")
        finally:
            conn.close()
        _schema_ready = True


class Item(BaseModel):
    text: str


@app.middleware("http")
async def tag_host(request, call_next):
    response = await call_next(request)
    response.headers["X-App-Host"] = HOST
    return response


@app.get("/")
def index():
    return {"app": "rigger demo", "host": HOST}


@app.get("/health")
def health(response: Response):
    checks = {}
    for name, url in (("db_write", WRITE_URL), ("db_read", READ_URL)):
        try:
            conn = connect(url)
            try:
                with conn.cursor() as cur:
                    cur.execute(WHO)
                    addr, replica = cur.fetchone()
                checks[name] = {"ok": True, "server": addr, "replica": replica}
            finally:
                conn.close()
        except Exception as e:  # noqa: BLE001 — health reports any failure
            checks[name] = {"ok": False, "error": str(e).strip()}
    try:
        checks["redis"] = {"ok": bool(cache.ping())}
    except Exception as e:  # noqa: BLE001
        checks["redis"] = {"ok": False, "error": str(e)}
    ok = all(c["ok"] for c in checks.values())
    response.status_code = 200 if ok else 503
    return {"status": "ok" if ok else "failing", "host": HOST, "checks": checks}


@app.post("/items", status_code=201)
def create_item(item: Item):
    ensure_schema()
    conn = connect(WRITE_URL)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("insert into items (text, written_by) values (%s, %s) returning id", (item.text, HOST))
            (item_id,) = cur.fetchone()
            cur.execute(WHO)
            addr, replica = cur.fetchone()
    finally:
        conn.close()
    return {"id": item_id, "text": item.text, "host": HOST, "db_server": addr, "db_replica": replica}


@app.get("/items/{item_id}")
def read_item(item_id: int):
    key = f"item:{item_id}"
    try:
        cached = cache.get(key)
    except redis.RedisError:
        cached = None  # the cache is an optimisation: read the database instead
    if cached is not None:
        return {**json.loads(cached), "cache": "hit", "host": HOST}
    conn = connect(READ_URL)
    try:
        with conn.cursor() as cur:
            cur.execute("select id, text, written_by from items where id = %s", (item_id,))
            row = cur.fetchone()
            cur.execute(WHO)
            addr, replica = cur.fetchone()
    except psycopg2.errors.UndefinedTable:
        row = None  # the replica has not received the table yet
    finally:
        conn.close()
    if row is None:
        # Not on the replica (yet): not cached, so a later read tries again.
        raise HTTPException(status_code=404, detail="not found (on the replica, yet)")
    body = {"id": row[0], "text": row[1], "written_by": row[2], "db_server": addr, "db_replica": replica}
    try:
        cache.setex(key, CACHE_TTL, json.dumps(body))
    except redis.RedisError:
        pass
    return {**body, "cache": "miss", "host": HOST}
