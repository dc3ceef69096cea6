"""An LLM gateway in front of a fake model, limited by usage_guard.

POST /v1/chat/completions (OpenAI's shape), with
    Authorization: Bearer <api key>   the api key is the usage_guard subject
    X-Tenant: <tenant>                or GATEWAY_DEFAULT_TENANT

Per request, three round trips to PostgreSQL, each its own transaction
(autocommit, so it works through pgbouncer in transaction pooling):

    admit(tenant, key, model, estimated input, max_tokens), the request's id
    as idempotency key (a retry after a broken connection reserves nothing twice)
        refused: 429 (usage_limit_exceeded), 403 (model_not_allowed) or
                 402 (SQLSTATE UG003, a policy error such as no
                 subscription), the refusal's JSON `detail` as the body and
                 its `headers` as HTTP headers
        allowed: call the model admit chose (a downgrade may change it), then
    settle(tenant, reservation, real input, real output)
        or cancel(tenant, reservation) when the model call failed.

A request that dies between admit and settle (the process killed, the
machine gone) keeps its estimate until usage_guard.expire_reservations runs
after the reservation's ttl (GATEWAY_TTL): schedule it with pg_cron.

The service's login role only needs `GRANT usage_guard_application`: it
executes admit, settle and cancel and reads no table.

Environment:
    GATEWAY_DSN             libpq conninfo (through pgbouncer), e.g.
                            "host=127.0.0.1 port=6432 dbname=gateway user=gateway"
    GATEWAY_POOL_SIZE       connections of the pool (default 16)
    GATEWAY_TTL             reservation ttl, an interval (default "5 minutes")
    GATEWAY_DEFAULT_TENANT  the tenant when a request has no X-Tenant header
    FAKE_MODEL_DELAY        seconds the fake model takes (default 0.05)
    FAKE_MODEL_TEST_HEADERS 1: honour X-Fake-Delay (seconds) and X-Fake-Fail
                            (the model call fails) request headers: tests only

Run: uvicorn --app-dir examples/gateway app:app --port 8000
(Debian: /usr/bin/python3 -m uvicorn ...)
"""

import asyncio
import hashlib
import json
import logging
import math
import os
import time
import uuid
from decimal import Decimal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

log = logging.getLogger("gateway")

DSN = os.environ.get("GATEWAY_DSN", "host=127.0.0.1 port=6432 dbname=gateway user=gateway")
POOL_SIZE = int(os.environ.get("GATEWAY_POOL_SIZE", "16"))
TTL = os.environ.get("GATEWAY_TTL", "5 minutes")
DEFAULT_TENANT = os.environ.get("GATEWAY_DEFAULT_TENANT") or None
FAKE_DELAY = float(os.environ.get("FAKE_MODEL_DELAY", "0.05"))
TEST_HEADERS = os.environ.get("FAKE_MODEL_TEST_HEADERS") == "1"
MAX_TOKENS_DEFAULT = 256
MAX_TOKENS_CAP = 100_000

# One round trip each; named arguments, no prepared statements (pgbouncer
# in transaction mode hands each transaction to any server connection).
ADMIT_SQL = """
SELECT allowed, decision, action, code, reservation_id, expires_at, model, requested_model,
       downgrade_to, estimated_tokens, estimated_cost, level, limit_name, headers, detail
  FROM usage_guard.admit(%(tenant)s, %(subject)s, %(model)s, %(input)s, %(output)s,
                         ttl => %(ttl)s::interval, idempotency_key => %(request_id)s,
                         attributes => %(attributes)s)
"""
SETTLE_SQL = """
SELECT state, settled, model, input_tokens, output_tokens, cost, estimated_cost, cost_delta
  FROM usage_guard.settle(%(tenant)s, %(reservation)s, %(input)s, %(output)s)
"""
CANCEL_SQL = "SELECT usage_guard.cancel(%(tenant)s, %(reservation)s) AS cancelled"

pool = AsyncConnectionPool(
    DSN,
    min_size=min(4, POOL_SIZE),
    max_size=POOL_SIZE,
    timeout=10,
    open=False,
    kwargs={"autocommit": True, "prepare_threshold": None, "row_factory": dict_row},
)
app = FastAPI(title="usage_guard gateway example")


@app.on_event("startup")
async def startup():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(message)s")
    await pool.open(wait=True, timeout=30)


@app.on_event("shutdown")
async def shutdown():
    await pool.close()


# ----------------------------------------------------------------------------
# The fake model
# ----------------------------------------------------------------------------

class ModelError(Exception):
    pass


def message_text(messages):
    """The text of a chat's messages (string contents, or text parts)."""
    parts = []
    for m in messages:
        c = m.get("content", "")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(p.get("text", "") for p in c if isinstance(p, dict))
    return "".join(parts)


def estimate_tokens(messages):
    """The gateway's estimate of input tokens: a token per 4 characters."""
    return math.ceil(len(message_text(messages)) / 4)


async def fake_model(model, messages, max_tokens, delay, fail):
    """A model that takes `delay` seconds and answers deterministically.

    It counts input tokens as the gateway estimates them (characters / 4),
    and would like to answer 256 to 1023 tokens (from a hash of the model and
    the prompt), cut to max_tokens: with max_tokens <= 256 it answers exactly
    max_tokens, so the real cost is the estimated one.
    """
    await asyncio.sleep(delay)
    if fail:
        raise ModelError(f"fake model {model} failed (X-Fake-Fail)")
    text = message_text(messages)
    digest = hashlib.sha256(f"{model}\0{text}".encode()).digest()
    wanted = 256 + int.from_bytes(digest[:4], "big") % 768
    output = min(max_tokens, wanted)
    return {
        "input_tokens": estimate_tokens(messages),
        "output_tokens": output,
        "finish_reason": "length" if output < wanted else "stop",
        "content": f"[{model}] " + " ".join(["lorem"] * min(output, 64)),
    }


# ----------------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------------

def error(status, code, message, headers=None, **extra):
    return JSONResponse({"code": code, "message": message, **extra}, status_code=status, headers=headers)


def db_error(e):
    """An error of admit as an HTTP response."""
    state = getattr(e, "sqlstate", None)
    diag = getattr(e, "diag", None)
    message = (diag.message_primary if diag else None) or str(e)
    if state == "UG003":
        # a policy error (no subscription, inactive, ...): DETAIL is JSON
        try:
            body = json.loads(diag.message_detail)
        except (TypeError, ValueError):
            body = {"code": "usage_policy_configuration_error"}
        body.setdefault("message", message)
        return JSONResponse(body, status_code=402)
    if state == "42704":
        if message.startswith("unknown subject"):
            return error(401, "invalid_api_key", message)
        if message.startswith("unknown model") or "has no price" in message:
            return error(404, "model_not_found", message)
        log.error("admit: %s", message)
        return error(500, "gateway_misconfigured", message)
    if state and state.startswith("22"):
        return error(400, "invalid_request", message)
    if isinstance(e, (psycopg.OperationalError, PoolTimeout)):
        log.warning("database unavailable: %s", e)
        return error(503, "usage_guard_unavailable", "the usage database is unavailable")
    log.error("admit failed: %s (%s)", message, state)
    return error(500, "internal_error", message)


async def query_one(sql, params):
    async with pool.connection() as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchone()


async def settle(tenant, reservation, input_tokens, output_tokens):
    """settle is idempotent: retry it when the database is briefly gone."""
    params = {"tenant": tenant, "reservation": reservation, "input": input_tokens, "output": output_tokens}
    for attempt in range(5):
        try:
            return await query_one(SETTLE_SQL, params)
        except (psycopg.OperationalError, PoolTimeout) as e:
            log.warning("settle %s, attempt %d: %s", reservation, attempt + 1, e)
            await asyncio.sleep(0.2 * (attempt + 1))
        except psycopg.Error as e:
            log.error("settle %s: %s", reservation, e)
            return None
    # The estimate stays held until the reservation expires; a settle after
    # that still records the real usage (a real gateway would queue it).
    log.error("settle %s failed: its estimate stays held until it expires", reservation)
    return None


async def cancel(tenant, reservation):
    try:
        await query_one(CANCEL_SQL, {"tenant": tenant, "reservation": reservation})
    except Exception as e:  # expiry gives it back later
        log.error("cancel %s failed: %s", reservation, e)


def as_number(v):
    return None if v is None else str(v) if isinstance(v, Decimal) else v


@app.get("/healthz")
async def healthz():
    try:
        await query_one("SELECT 1 AS ok", None)
    except Exception as e:
        return error(503, "usage_guard_unavailable", str(e))
    return {"ok": True}


@app.post("/v1/chat/completions")
async def chat_completions(request: Request):
    auth = request.headers.get("authorization", "")
    if not auth.lower().startswith("bearer ") or not auth[7:].strip():
        return error(401, "missing_api_key", "Authorization: Bearer <api key> is required")
    api_key = auth[7:].strip()
    tenant = request.headers.get("x-tenant") or DEFAULT_TENANT
    if not tenant:
        return error(400, "missing_tenant", "X-Tenant is required")
    try:
        body = await request.json()
    except ValueError:
        return error(400, "invalid_request", "the body must be JSON")
    model = body.get("model") if isinstance(body, dict) else None
    messages = body.get("messages") if isinstance(body, dict) else None
    max_tokens = body.get("max_tokens", MAX_TOKENS_DEFAULT) if isinstance(body, dict) else None
    if not isinstance(model, str) or not model:
        return error(400, "invalid_request", "model is required")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return error(400, "invalid_request", "messages must be a non-empty list of objects")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_TOKENS_CAP:
        return error(400, "invalid_request", f"max_tokens must be a whole number from 1 to {MAX_TOKENS_CAP}")
    delay, fail = FAKE_DELAY, False
    if TEST_HEADERS:
        try:
            delay = min(max(float(request.headers.get("x-fake-delay", delay)), 0.0), 120.0)
        except ValueError:
            return error(400, "invalid_request", "X-Fake-Delay must be a number of seconds")
        fail = request.headers.get("x-fake-fail") == "1"

    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    estimated_input = estimate_tokens(messages)
    params = {
        "tenant": tenant, "subject": api_key, "model": model,
        "input": estimated_input, "output": max_tokens, "ttl": TTL, "request_id": request_id,
        "attributes": Jsonb({"request_id": request_id, "route": "/v1/chat/completions"}),
    }
    # The request's id is admit's idempotency key: when the connection
    # breaks after admit committed, the retry gets the same reservation
    # instead of a second one.
    for attempt in range(3):
        try:
            adm = await query_one(ADMIT_SQL, params)
            break
        except (psycopg.OperationalError, PoolTimeout) as e:
            if attempt == 2 or isinstance(e, PoolTimeout):
                return db_error(e)
            log.warning("admit, attempt %d: %s", attempt + 1, e)
            await asyncio.sleep(0.1)
        except psycopg.Error as e:
            return db_error(e)

    headers = dict(adm["headers"] or {})
    if not adm["allowed"]:
        status = 403 if adm["code"] == "model_not_allowed" else 429
        return JSONResponse(adm["detail"], status_code=status, headers=headers)

    reservation = adm["reservation_id"]
    try:
        result = await fake_model(adm["model"], messages, max_tokens, delay, fail)
    except BaseException as e:
        # the call failed or this task was cancelled: give the estimate back
        await asyncio.shield(cancel(tenant, reservation))
        if not isinstance(e, Exception):
            raise
        return error(502, "model_error", str(e), headers=headers, reservation_id=str(reservation))

    s = await settle(tenant, reservation, result["input_tokens"], result["output_tokens"])
    headers.update({
        "X-Gateway-Model": adm["model"],
        "X-Gateway-Requested-Model": adm["requested_model"],
        "X-Gateway-Action": adm["action"],
        "X-Gateway-Reservation": str(reservation),
    })
    return JSONResponse({
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": adm["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": result["content"]},
            "finish_reason": result["finish_reason"],
        }],
        "usage": {
            "prompt_tokens": result["input_tokens"],
            "completion_tokens": result["output_tokens"],
            "total_tokens": result["input_tokens"] + result["output_tokens"],
            "cost_usd": as_number(s["cost"]) if s else None,
        },
        "usage_guard": {
            "reservation_id": str(reservation),
            "requested_model": adm["requested_model"],
            "model": adm["model"],
            "action": adm["action"],
            "downgraded": adm["model"] != adm["requested_model"],
            "estimated_tokens": as_number(adm["estimated_tokens"]),
            "estimated_cost_usd": as_number(adm["estimated_cost"]),
            "settled": s is not None,
            "cost_delta_usd": as_number(s["cost_delta"]) if s else None,
        },
    }, headers=headers)
