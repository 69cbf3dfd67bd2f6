"""The orders system as a real HTTP service: the backend that contracts/orders.yaml binds to.

    python -m examples.orders.service --port 8701        # then: CHARTER_SERVICE_ORDERS_URL=http://127.0.0.1:8701

It behaves the way a careful payment-grade API does, which is what Charter's HTTP binding
relies on, not what it assumes:

- `Idempotency-Key` on a write: the first request with a key is performed once; a repeat
  with the same key and body gets the first answer again; the same key with another body
  is refused (422); a repeat while the first is still being handled gets 409.
- `ETag` on every order it returns, and `If-Match` on writes: a write whose order changed
  since that ETag is refused with 412, inside the write's own transaction.
- Errors are application/problem+json.
- Its own integrity rules stand whatever the caller is (it will not cancel a dispatched order).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from charter.backends import CallContext, Precondition, PreconditionFailed, fingerprint
from charter.principal import Principal
from charter.server import serving
from examples._sqlite import Conflict, NotFound
from examples.orders import backend

__all__ = ["URL_VARIABLE", "app", "create_app", "exported", "running"]

URL_VARIABLE = "CHARTER_SERVICE_ORDERS_URL"  # where the orders contract's binding finds the service

OrderStatus = Literal["pending", "confirmed", "picking", "packed", "dispatched", "delivered", "cancelled"]


Money = Annotated[Decimal, Field(json_schema_extra={"format": "decimal"})]  # says "money" to importers


class LineItem(BaseModel):
    sku: str
    quantity: int
    unit_price: Money


class Order(BaseModel):
    """A customer's order."""

    id: int
    customer: str
    items: list[LineItem]
    total: Money
    refunded: Money
    placed_at: datetime
    note: str | None
    status: OrderStatus


class RefundCheck(BaseModel):
    order_id: int
    eligible: bool
    refundable: Money
    explanation: str


class CancelRequest(BaseModel):
    reason: str = Field(description="Why the customer cancelled.")


class RefundRequest(BaseModel):
    amount: Money = Field(description="How much to refund.")
    reason: Literal["damaged", "late", "wrong_item", "goodwill"]


class ServiceError(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    slug = title.lower().replace(" ", "-")
    body = {"type": f"https://example.com/orders/problems/{slug}", "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def _etag(order: dict[str, Any]) -> str:
    return f'"{fingerprint(order)}"'


def _order_response(order: dict[str, Any], status: int = 200) -> Response:
    body = Order.model_validate(order).model_dump_json()
    return Response(body, status_code=status, media_type="application/json", headers={"ETag": _etag(order)})


_IDEMPOTENCY_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    request TEXT NOT NULL,     -- sha256 of method, path and body: a key names one request
    state TEXT NOT NULL,       -- started | done
    status INTEGER,
    body TEXT,
    etag TEXT
);
"""


def _db() -> sqlite3.Connection:
    connection = backend._db()
    connection.executescript(_IDEMPOTENCY_SCHEMA)
    return connection


def _context(if_match: str | None, receipt: str | None, key: str | None, order_id: int) -> CallContext | None:
    """The If-Match precondition, in the form the backend's write functions check in-transaction."""
    if if_match is None or if_match == "*":
        return None
    precondition = Precondition(
        entity="Order", key=order_id, field=None, state=None, fingerprint=if_match.strip().strip('"')
    )
    run_id, _, call = (receipt or "").partition("/")
    return CallContext(
        run_id=run_id,
        call=int(call) if call.isdigit() else 0,
        principal=Principal("orders-service"),
        idempotency_key=key,
        precondition=precondition,
        deadline=time.monotonic() + 30,
    )


def _idempotent(key: str | None, request_text: str, perform: Callable[[], dict[str, Any]]) -> Response:
    """Perform a write once per Idempotency-Key (without a key: once per request)."""
    if key is None:
        return _order_response(perform())
    digest = hashlib.sha256(request_text.encode()).hexdigest()
    with _db() as db:
        db.execute("BEGIN IMMEDIATE")
        row = db.execute("SELECT request, state, status, body, etag FROM idempotency WHERE key = ?", (key,)).fetchone()
        if row is None:
            db.execute("INSERT INTO idempotency (key, request, state) VALUES (?, ?, 'started')", (key, digest))
        db.execute("COMMIT")
    if row is not None:
        if row["request"] != digest:
            raise ServiceError(422, "Idempotency key reused", f"Idempotency-Key {key} was used for another request")
        if row["state"] != "done":
            raise ServiceError(409, "Request in progress", f"a request with Idempotency-Key {key} is in progress")
        headers = {"ETag": row["etag"], "Idempotent-Replayed": "true"} if row["etag"] else {}
        return Response(row["body"], status_code=row["status"], media_type="application/json", headers=headers)
    try:
        order = perform()
    except BaseException:
        # Nothing was written: the key is free for a corrected request.
        with _db() as db:
            db.execute("DELETE FROM idempotency WHERE key = ? AND state = 'started'", (key,))
        raise
    response = _order_response(order)
    with _db() as db:
        db.execute(
            "UPDATE idempotency SET state = 'done', status = ?, body = ?, etag = ? WHERE key = ?",
            (response.status_code, bytes(response.body).decode(), response.headers["ETag"], key),
        )
    return response


class _WriteHeaders:
    """What Charter's HTTP binding sends with every write: its idempotency key, the ETag of the
    gate's read, and the receipt that decided it."""

    def __init__(
        self,
        idempotency_key: Annotated[str | None, Header()] = None,
        if_match: Annotated[str | None, Header()] = None,
        charter_receipt: Annotated[str | None, Header()] = None,
    ) -> None:
        self.idempotency_key, self.if_match, self.charter_receipt = idempotency_key, if_match, charter_receipt

    def perform(
        self, order_id: int, request_text: str, write: Callable[[CallContext | None], dict[str, Any]]
    ) -> Response:
        context = _context(self.if_match, self.charter_receipt, self.idempotency_key, order_id)
        return _idempotent(self.idempotency_key, request_text, lambda: write(context))


WriteHeaders = Annotated[_WriteHeaders, Depends()]


def create_app() -> FastAPI:
    service = FastAPI(
        title="Orders service",
        version="1.0.0",
        description="The example order system behind contracts/orders.yaml.",
    )

    @service.exception_handler(ServiceError)
    async def _service_error(_: Request, error: ServiceError) -> JSONResponse:
        return _problem(error.status, error.title, error.detail)

    @service.exception_handler(NotFound)
    async def _not_found(_: Request, error: NotFound) -> JSONResponse:
        return _problem(404, "Not found", str(error))

    @service.exception_handler(Conflict)
    async def _conflict(_: Request, error: Conflict) -> JSONResponse:
        return _problem(409, "Conflict", str(error))

    @service.exception_handler(PreconditionFailed)
    async def _changed(_: Request, error: PreconditionFailed) -> JSONResponse:
        return _problem(412, "Precondition failed", str(error))

    @service.get("/orders/{order_id}", response_model=Order, operation_id="get_order", summary="One order.")
    def get_order(order_id: int) -> Response:
        return _order_response(backend.get_order(id=order_id))

    @service.get("/orders", response_model=list[Order], operation_id="list_orders", summary="Orders, filtered.")
    def list_orders(status: OrderStatus | None = None, customer: str | None = None) -> list[dict[str, Any]]:
        return backend.list_orders(status=status, customer=customer)

    @service.get(
        "/orders/{order_id}/refund-check",
        response_model=RefundCheck,
        operation_id="verify_refund",
        summary="Whether an order can be refunded, and how much.",
    )
    def verify_refund(order_id: int) -> dict[str, Any]:
        return backend.verify_refund(id=order_id)

    @service.post("/orders/{order_id}/confirm", response_model=Order, operation_id="confirm_order", summary="Confirm.")
    def confirm_order(order_id: int, headers: WriteHeaders) -> Response:
        return headers.perform(
            order_id, f"POST /orders/{order_id}/confirm", lambda ctx: backend.confirm_order(id=order_id, charter=ctx)
        )

    @service.post("/orders/{order_id}/cancel", response_model=Order, operation_id="cancel_order", summary="Cancel.")
    def cancel_order(order_id: int, request: CancelRequest, headers: WriteHeaders) -> Response:
        return headers.perform(
            order_id,
            f"POST /orders/{order_id}/cancel {request.model_dump_json()}",
            lambda ctx: backend.cancel_order(id=order_id, reason=request.reason, charter=ctx),
        )

    @service.post(
        "/orders/{order_id}/refunds", response_model=Order, operation_id="refund_order", summary="Refund part or all."
    )
    def refund_order(order_id: int, request: RefundRequest, headers: WriteHeaders) -> Response:
        return headers.perform(
            order_id,
            f"POST /orders/{order_id}/refunds {request.model_dump_json()}",
            lambda ctx: backend.refund_order(id=order_id, amount=request.amount, reason=request.reason, charter=ctx),
        )

    return service


app = create_app()


def running(application: Any = None, *, host: str = "127.0.0.1", port: int = 0) -> AbstractContextManager[str]:
    """Serve the orders service (or `application`) on loopback in a background thread; yields its base URL."""
    return serving(application or app, host=host, port=port, name="orders-service")


@contextmanager
def exported(*, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve the orders service and point the orders contract at it (CHARTER_SERVICE_ORDERS_URL)
    until the block ends; the variable's previous value comes back afterwards."""
    previous = os.environ.get(URL_VARIABLE)
    with running(host=host, port=port) as url:
        os.environ[URL_VARIABLE] = url
        try:
            yield url
        finally:
            if previous is None:
                os.environ.pop(URL_VARIABLE, None)
            else:
                os.environ[URL_VARIABLE] = previous


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the example orders system over HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8701)
    parser.add_argument("--seed", action="store_true", help="(re)create the example orders first")
    arguments = parser.parse_args()
    if arguments.seed:
        print(f"seeded {backend.seed()}")
    print(f"orders service on http://{arguments.host}:{arguments.port}  (CHARTER_SERVICE_ORDERS_URL)")
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_level="warning")


if __name__ == "__main__":
    main()
