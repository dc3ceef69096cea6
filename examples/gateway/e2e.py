"""The gateway example's end-to-end tests: HTTP requests to app.py (which
this driver starts, kills and restarts), checks in PostgreSQL.

Run by e2e.sh, which starts PostgreSQL and pgbouncer and sets:
    E2E_DIR          a work directory (service.log, service.pid)
    E2E_APP_DIR      the directory of app.py
    E2E_ADMIN_DSN    a superuser, directly to PostgreSQL (checks, LISTEN)
    E2E_BOUNCER_DSN  the service's role through pgbouncer
    E2E_HTTP_PORT    the port the service listens on
Prints one line per test: "test <name> ... ok" or "test <name> ... FAILED".
"""

import concurrent.futures
import datetime
import http.client
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from decimal import Decimal

import psycopg

WORK = os.environ["E2E_DIR"]
APP_DIR = os.environ["E2E_APP_DIR"]
ADMIN_DSN = os.environ["E2E_ADMIN_DSN"]
BOUNCER_DSN = os.environ["E2E_BOUNCER_DSN"]
PORT = int(os.environ["E2E_HTTP_PORT"])
PYTHON = "/usr/bin/python3"

PROMPT = "x" * 4000            # 1,000 input tokens
MAX_TOKENS = 200               # the fake model answers exactly 200
COST_LARGE = Decimal("0.01")   # gw-large: 1,000 x $5/1M + 200 x $25/1M
COST_SMALL = Decimal("0.002")  # gw-small: 1,000 x $1/1M + 200 x $5/1M
THREADS = 24


class Failed(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Failed(message)


# ----------------------------------------------------------------------------
# The service
# ----------------------------------------------------------------------------

service = None


def pick_port():
    """a loopback port nothing is bound to, below the ephemeral range"""
    for _ in range(500):
        p = random.randrange(10000, 30000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
        return p
    raise Failed("no free port")


def start_service(attempts=3):
    """Starts app.py; on another port when its port was taken meanwhile"""
    global PORT
    for attempt in range(attempts):
        try:
            return start_service_once()
        except PortTaken:
            PORT = pick_port()
    raise Failed("the service could not listen on any port (service.log)")


class PortTaken(Exception):
    pass


def start_service_once():
    global service
    env = dict(os.environ,
               GATEWAY_DSN=BOUNCER_DSN,
               GATEWAY_POOL_SIZE="16",
               GATEWAY_TTL="5 minutes",
               FAKE_MODEL_DELAY="0.05",
               FAKE_MODEL_TEST_HEADERS="1",
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("GATEWAY_DEFAULT_TENANT", None)
    out = open(os.path.join(WORK, "service.log"), "ab")
    service = subprocess.Popen(
        [PYTHON, "-m", "uvicorn", "--app-dir", APP_DIR, "app:app",
         "--host", "127.0.0.1", "--port", str(PORT), "--log-level", "warning"],
        stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    out.close()
    with open(os.path.join(WORK, "service.pid"), "w") as f:
        f.write(f"{service.pid}\n")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if service.poll() is not None:
            with open(os.path.join(WORK, "service.log"), errors="replace") as f:
                if "address already in use" in f.read()[-2000:]:
                    raise PortTaken()
            raise Failed(f"the service exited with status {service.returncode} (service.log)")
        try:
            status, _, _ = request("GET", "/healthz", timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise Failed("the service did not answer /healthz within 30 s")


def stop_service(sig=signal.SIGTERM):
    global service
    if service is None:
        return
    if service.poll() is None:
        service.send_signal(sig)
        try:
            service.wait(10)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(10)
    service = None
    try:
        os.unlink(os.path.join(WORK, "service.pid"))
    except FileNotFoundError:
        pass


# ----------------------------------------------------------------------------
# HTTP and SQL
# ----------------------------------------------------------------------------

def request(method, path, body=None, headers=None, timeout=15):
    """(status, headers with lower-case names, JSON body or None)"""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        h = {"Content-Type": "application/json"} if data else {}
        h.update(headers or {})
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        raw = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = {"raw": raw.decode(errors="replace")}
        return r.status, hdrs, parsed
    finally:
        conn.close()


def chat(key, model="gw-large", tenant="acme", max_tokens=MAX_TOKENS, prompt=PROMPT, extra=None, timeout=15):
    headers = {"Authorization": f"Bearer {key}", "X-Tenant": tenant}
    headers.update(extra or {})
    return request("POST", "/v1/chat/completions",
                   {"model": model, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": prompt}]},
                   headers, timeout)


def concurrently(n, fn):
    """fn() n times on THREADS threads, all released together"""
    gate = threading.Barrier(min(n, THREADS))

    def one(i):
        if i < THREADS:
            try:
                gate.wait(10)
            except threading.BrokenBarrierError:
                pass
        return fn()

    with concurrent.futures.ThreadPoolExecutor(THREADS) as ex:
        return list(ex.map(one, range(n)))


def sql(query, params=None):
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=10) as conn:
        return conn.execute(query, params).fetchall()


def sql_one(query, params=None):
    rows = sql(query, params)
    return rows[0][0] if rows else None


def statuses(results):
    out = {}
    for status, _, _ in results:
        out[status] = out.get(status, 0) + 1
    return out


def ledger_sum(subject, feature):
    return sql_one("""SELECT coalesce(sum(amount), 0) FROM usage_guard.usage_events
                       WHERE tenant_id = 'acme' AND subject_id = %s AND feature_key = %s""",
                   (subject, feature))


def reservation_states(subject):
    return dict(sql("""SELECT state, count(*) FROM usage_guard.reservations
                        WHERE tenant_id = 'acme' AND subject_id = %s GROUP BY 1""", (subject,)))


# ----------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------

state = {}


def test_budget_exact_under_concurrency():
    # sk-budget: $0.10 per rolling hour = exactly 10 requests of $0.01; 30 at
    # once, each holding its estimate 0.3 s before settling
    n = 10
    results = concurrently(3 * n, lambda: chat("sk-budget", extra={"X-Fake-Delay": "0.3"}))
    state["budget_results"] = results
    st = statuses(results)
    check(st == {200: n, 429: 2 * n}, f"expected {n} x 200 and {2 * n} x 429, got {st}")
    costs = [Decimal(b["usage"]["cost_usd"]) for s, _, b in results if s == 200]
    check(sum(costs) == n * COST_LARGE, f"the responses' costs add up to {sum(costs)}")
    used = ledger_sum("sk-budget", "cost_usd")
    check(used == n * COST_LARGE, f"ledger cost_usd of sk-budget: {used}, expected {n * COST_LARGE}")
    tokens = ledger_sum("sk-budget", "tokens")
    check(tokens == n * 1200, f"ledger tokens of sk-budget: {tokens}, expected {n * 1200}")
    rs = reservation_states("sk-budget")
    check(rs == {"settled": n}, f"reservations of sk-budget: {rs}")
    settled = sql_one("""SELECT sum(cost) FROM usage_guard.reservations
                          WHERE tenant_id = 'acme' AND subject_id = 'sk-budget'""")
    check(settled == n * COST_LARGE, f"reservations' cost: {settled}")


def test_refusal_body_and_headers():
    status, h, body = chat("sk-budget")
    now = time.time()
    check(status == 429, f"status {status}")
    for k in ("code", "level", "limit_kind", "feature_key", "reset_at", "retry_after", "hard_limit", "message"):
        check(k in body, f"the body lacks {k}: {body}")
    check(body["code"] == "usage_limit_exceeded", f"code {body['code']}")
    check(body["level"] == "api_key" and body["subject_id"] == "sk-budget", f"level/subject: {body}")
    check(body["limit_kind"] == "quota" and body["feature_key"] == "cost_usd", f"limit: {body}")
    check(Decimal(str(body["hard_limit"])) == Decimal("0.10"), f"hard_limit {body['hard_limit']}")
    for k in ("retry-after", "ratelimit", "ratelimit-policy", "x-ratelimit-limit", "x-ratelimit-remaining",
              "x-ratelimit-reset", "x-budget-limit", "x-budget-used", "x-budget-remaining", "x-budget-reset"):
        check(k in h, f"no {k} header: {sorted(h)}")
    reset = datetime.datetime.fromisoformat(body["reset_at"].replace("Z", "+00:00")).timestamp()
    retry = int(h["retry-after"])
    check(retry == math.ceil(body["retry_after"]), f"Retry-After {retry} vs retry_after {body['retry_after']}")
    check(abs((now + retry) - reset) <= 5, f"Retry-After {retry} s does not lead to reset_at {body['reset_at']}")
    check(int(h["x-ratelimit-reset"]) == math.ceil(reset), f"X-RateLimit-Reset {h['x-ratelimit-reset']} vs {reset}")
    check(h["x-budget-reset"] == h["x-ratelimit-reset"], "X-Budget-Reset differs from X-RateLimit-Reset")
    # RateLimit headers are sf-integers: the whole dollars of a $0.10 budget
    check(h["x-ratelimit-limit"] == "0" and h["x-ratelimit-remaining"] == "0",
          f"X-RateLimit-Limit/Remaining {h['x-ratelimit-limit']}/{h['x-ratelimit-remaining']}")
    check(f";t={retry}" in h["ratelimit"] and ";r=0" in h["ratelimit"], f"RateLimit {h['ratelimit']}")
    # the budget headers, in cents
    check((h["x-budget-limit"], h["x-budget-used"], h["x-budget-remaining"]) == ("0.10", "0.10", "0.00"),
          f"X-Budget-Limit/Used/Remaining {h['x-budget-limit']}/{h['x-budget-used']}/{h['x-budget-remaining']}")
    check(body["headers"]["Retry-After"] == h["retry-after"], "the body's headers differ from the response's")
    # an allowed response carries the budget headers too (after that request)
    ok = [r for r in state.get("budget_results", []) if r[0] == 200]
    check(ok, "no 200 response of the budget test to look at")
    used = sorted(Decimal(r[1]["x-budget-used"]) for r in ok)
    check(used == [COST_LARGE * (i + 1) for i in range(len(ok))],
          f"X-Budget-Used of the allowed requests: {[str(u) for u in used]}")
    for _, rh, _ in ok:
        check(Decimal(rh["x-budget-used"]) + Decimal(rh["x-budget-remaining"]) == Decimal(rh["x-budget-limit"]),
              f"Used + Remaining != Limit: {rh}")
        check("retry-after" not in rh, "an allowed response has Retry-After")


def test_model_not_allowed():
    status, h, body = chat("sk-guest", model="gw-large")
    check(status == 403, f"status {status}: {body}")
    check(body.get("code") == "model_not_allowed", f"code {body.get('code')}")
    check(body.get("model") == "gw-large" and body.get("level") == "user"
          and body.get("limit_kind") == "model" and body.get("limit_subject_id") == "bob", f"body {body}")
    status, _, body = chat("sk-guest", model="gw-small")
    check(status == 200 and body["model"] == "gw-small", f"gw-small for sk-guest: {status} {body}")
    rs = reservation_states("sk-guest")
    check(rs == {"settled": 1}, f"reservations of sk-guest: {rs} (the refused call reserved something)")


def test_killed_request_expires():
    # sk-crash: $0.01 = one request.  A slow request is admitted, then the
    # service is killed (-9) while the model "runs": nobody settles.
    outcome = {}

    def slow():
        try:
            outcome["response"] = chat("sk-crash", extra={"X-Fake-Delay": "30"}, timeout=40)
        except Exception as e:  # the connection dies with the service
            outcome["error"] = repr(e)

    t = threading.Thread(target=slow, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    rid = None
    while time.monotonic() < deadline and rid is None:
        rid = sql_one("""SELECT reservation_id FROM usage_guard.reservations
                          WHERE tenant_id = 'acme' AND subject_id = 'sk-crash' AND state = 'open'""")
        time.sleep(0.05)
    check(rid is not None, "the slow request was not admitted within 10 s")
    service.send_signal(signal.SIGKILL)
    service.wait(10)
    t.join(10)
    check("response" not in outcome, f"the killed request was answered: {outcome.get('response')}")
    stop_service()
    start_service()
    state["crash_reservation"] = rid
    # the estimate is still held: the budget is spent
    status, _, body = chat("sk-crash")
    check(status == 429, f"before expiry: {status} {body}")
    # the sweeper (pg_cron in production) after the ttl
    n = sql_one("""SELECT usage_guard.expire_reservations(expires_at + interval '1 second')
                     FROM usage_guard.reservations WHERE tenant_id = 'acme' AND reservation_id = %s""", (rid,))
    check(n == 1, f"expire_reservations expired {n} reservations, expected 1 (others left open?)")
    st = sql_one("SELECT state FROM usage_guard.reservations WHERE tenant_id = 'acme' AND reservation_id = %s",
                 (rid,))
    check(st == "expired", f"state {st}")
    sums = dict(sql("""SELECT feature_key, sum(amount) FROM usage_guard.usage_events
                        WHERE tenant_id = 'acme' AND attributes->>'reservation_id' = %s GROUP BY 1""", (str(rid),)))
    check(sums == {"cost_usd": 0, "tokens": 0}, f"the ledger of the reservation: {sums}")
    check(ledger_sum("sk-crash", "cost_usd") == 0, "sk-crash's budget was not given back")


def test_model_failure_cancels():
    # the budget is back: a failing model call cancels its reservation ...
    status, h, body = chat("sk-crash", extra={"X-Fake-Fail": "1"})
    check(status == 502 and body.get("code") == "model_error", f"failing model: {status} {body}")
    rid = body.get("reservation_id")
    st = sql_one("SELECT state FROM usage_guard.reservations WHERE tenant_id = 'acme' AND reservation_id = %s",
                 (rid,))
    check(st == "cancelled", f"the failed call's reservation is {st}")
    # ... so exactly one more request fits
    status, _, body = chat("sk-crash")
    check(status == 200 and Decimal(body["usage"]["cost_usd"]) == COST_LARGE, f"after expiry: {status} {body}")
    status, _, _ = chat("sk-crash")
    check(status == 429, f"the budget allowed a second request: {status}")
    check(ledger_sum("sk-crash", "cost_usd") == COST_LARGE, "sk-crash's ledger")


def test_alert_notify_once():
    # sk-alert: $0.10 with an alert at 50%; LISTEN needs a session: directly
    # to PostgreSQL, not through pgbouncer
    got = []
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=10) as listener:
        listener.add_notify_handler(got.append)
        listener.execute("LISTEN usage_guard_alerts")
        results = concurrently(20, lambda: chat("sk-alert", extra={"X-Fake-Delay": "0.1"}))
        st = statuses(results)
        check(st == {200: 10, 429: 10}, f"expected 10 x 200 and 10 x 429, got {st}")
        # every admit and settle committed before its response: their
        # notifications are on the way.  Any query delivers what arrived.
        t0 = time.monotonic()
        while time.monotonic() - t0 < (1 if got else 5):
            listener.execute("SELECT 1")
            time.sleep(0.05)
    payloads = [json.loads(n.payload) for n in got if n.channel == "usage_guard_alerts"]
    mine = [p for p in payloads if p.get("tenant_id") == "acme" and p.get("subject_id") == "sk-alert"]
    check(len(mine) == 1, f"{len(mine)} notifications for sk-alert: {mine}")
    p = mine[0]
    check(Decimal(str(p["threshold"])) == Decimal("0.5") and p["feature_key"] == "cost_usd"
          and p["level"] == "api_key" and Decimal(str(p["limit_value"])) == Decimal("0.10"), f"payload {p}")
    check(Decimal(str(p["usage"])) >= Decimal("0.05"), f"alert below its threshold: {p}")
    rows = sql("""SELECT alert_id, threshold FROM usage_guard.alerts
                   WHERE tenant_id = 'acme' AND subject_id = 'sk-alert'""")
    check(len(rows) == 1 and rows[0][0] == p["alert_id"], f"alerts rows {rows} vs notification {p}")
    limit_id = sql_one("""SELECT limit_id FROM usage_guard.subject_limits
                           WHERE tenant_id = 'acme' AND subject_id = 'sk-alert'""")
    check(p["limit_id"] == limit_id and p["window_start"] and p["window_end"], f"payload {p}")


def test_downgrade():
    # sk-down: $0.013 with action downgrade: gw-large ($0.01), then gw-large
    # does not fit but gw-small ($0.002) does, then neither does
    s1, h1, b1 = chat("sk-down")
    check(s1 == 200 and b1["model"] == "gw-large" and not b1["usage_guard"]["downgraded"], f"first: {s1} {b1}")
    s2, h2, b2 = chat("sk-down")
    check(s2 == 200, f"second: {s2} {b2}")
    check(b2["model"] == "gw-small" and b2["usage_guard"]["downgraded"]
          and b2["usage_guard"]["requested_model"] == "gw-large" and b2["usage_guard"]["action"] == "downgrade",
          f"second: {b2}")
    check(h2.get("x-gateway-model") == "gw-small" and h2.get("x-gateway-action") == "downgrade", f"headers {h2}")
    check(Decimal(b2["usage"]["cost_usd"]) == COST_SMALL, f"cost {b2['usage']}")
    s3, _, b3 = chat("sk-down")
    check(s3 == 429 and b3["code"] == "usage_limit_exceeded", f"third: {s3} {b3}")
    rows = sql("""SELECT model, requested_model, action, state, cost FROM usage_guard.reservations
                   WHERE tenant_id = 'acme' AND subject_id = 'sk-down' ORDER BY reserved_at""")
    check(rows == [("gw-large", "gw-large", "none", "settled", COST_LARGE),
                   ("gw-small", "gw-large", "downgrade", "settled", COST_SMALL)], f"reservations {rows}")


def test_policy_and_auth_errors():
    status, _, body = chat("sk-demo", tenant="ghost")
    check(status == 402 and body.get("code") == "usage_policy_configuration_error"
          and body.get("reason") == "no_subscription", f"no subscription: {status} {body}")
    status, _, body = chat("sk-nobody")
    check(status == 401 and body.get("code") == "invalid_api_key", f"unknown key: {status} {body}")
    status, _, body = request("POST", "/v1/chat/completions", {"model": "gw-small", "messages": []},
                              {"X-Tenant": "acme"})
    check(status == 401, f"no key: {status} {body}")
    status, _, body = chat("sk-demo", max_tokens="lots")
    check(status == 400 and body.get("code") == "invalid_request", f"bad max_tokens: {status} {body}")
    check(reservation_states("sk-demo") == {}, "a refused request of sk-demo reserved something")


def test_service_role_reads_nothing():
    # the service's role may execute the calls but not read the tables
    with psycopg.connect(BOUNCER_DSN, autocommit=True, prepare_threshold=None, connect_timeout=10) as conn:
        try:
            conn.execute("SELECT count(*) FROM usage_guard.reservations").fetchall()
        except psycopg.errors.InsufficientPrivilege:
            return
    raise Failed("the gateway role could read usage_guard.reservations")


def test_nothing_left_open():
    rows = sql("SELECT subject_id, state FROM usage_guard.reservations WHERE state = 'open'")
    check(not rows, f"open reservations left: {rows}")
    # the ledger holds exactly the settled costs: every estimate that was
    # cancelled or expired went back
    ledger = sql_one("""SELECT coalesce(sum(amount), 0) FROM usage_guard.usage_events
                         WHERE tenant_id = 'acme' AND feature_key = 'cost_usd'""")
    settled = sql_one("""SELECT coalesce(sum(cost), 0) FROM usage_guard.reservations
                          WHERE tenant_id = 'acme' AND state = 'settled'""")
    check(ledger == settled, f"ledger cost_usd {ledger} != settled cost {settled}")

TESTS = [
    ("budget_exact_under_concurrency", test_budget_exact_under_concurrency),
    ("refusal_body_and_headers", test_refusal_body_and_headers),
    ("model_not_allowed", test_model_not_allowed),
    ("killed_request_expires", test_killed_request_expires),
    ("model_failure_cancels", test_model_failure_cancels),
    ("alert_notify_once", test_alert_notify_once),
    ("downgrade", test_downgrade),
    ("policy_and_auth_errors", test_policy_and_auth_errors),
    ("service_role_reads_nothing", test_service_role_reads_nothing),
    ("nothing_left_open", test_nothing_left_open),
]


def main():
    passed = failed = 0
    with open(os.path.join(WORK, "driver.pid"), "w") as f:
        f.write(f"{os.getpid()}\n")
    # stopped (e2e.sh interrupted): stop the service on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        start_service()
    except Exception as e:
        print(f"test service_start ... FAILED\n    {e}", flush=True)
        stop_service()
        return 1
    try:
        for name, fn in TESTS:
            t0 = time.monotonic()
            try:
                if service is None or service.poll() is not None:
                    stop_service()
                    start_service()
                fn()
            except Exception as e:
                failed += 1
                print(f"test {name} ... FAILED ({time.monotonic() - t0:.1f} s)", flush=True)
                detail = str(e) if isinstance(e, Failed) else traceback.format_exc()
                for line in detail.splitlines():
                    print(f"    {line}", flush=True)
            else:
                passed += 1
                print(f"test {name} ... ok ({time.monotonic() - t0:.1f} s)", flush=True)
    finally:
        stop_service()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
