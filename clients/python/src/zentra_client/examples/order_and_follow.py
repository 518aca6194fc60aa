"""Places an order through the gateway and follows its saga to the end.

    source <state dir>/dev-keys.env      # written by `just up`
    python -m zentra_client.examples.order_and_follow [--address 127.0.0.1:8080] [--decline]

It creates a product of its own (a SKU unique to the run), shows how a bad request is refused
(the field violations, typed), places an order paid with an approving token (or a declining one
with --decline), prints every state of its saga, and exits 0 when the order ended as expected:
CONFIRMED, or REJECTED with --decline.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

import grpc

from zentra.common.v1.common_pb2 import Address, Money
from zentra.inventory.v1.inventory_pb2 import CreateProductRequest
from zentra.order.v1 import order_pb2
from zentra.saga.v1 import saga_pb2
from zentra_client import ZentraError, connect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=os.environ.get("ZENTRA_GATEWAY", "127.0.0.1:8080"))
    parser.add_argument("--decline", action="store_true", help="pay with a token the processor declines")
    args = parser.parse_args(argv)
    key = os.environ.get("ZENTRA_OPERATOR_KEY")
    if not key:
        print("ZENTRA_OPERATOR_KEY is not set: source the dev-keys.env `just up` wrote", file=sys.stderr)
        return 2

    run = uuid.uuid4().hex[:8]
    price = Money(currency_code="USD", amount_minor=1299)
    with connect(args.address, key) as zentra:
        sku = f"PY-{run.upper()}"
        zentra.inventory.CreateProduct(
            CreateProductRequest(
                sku=sku, name="Python mug", initial_stock=10, unit_price=price,
                idempotency_key=f"product-{run}",
            )
        )
        order = order_pb2.PlaceOrderRequest(
            customer_id=f"py-{run}",
            customer_email=f"py-{run}@customers.zentra.test",
            shipping_address=Address(
                recipient="Ada", lines=["1 Main St"], city="Springfield",
                postal_code="12345", country_code="US",
            ),
            lines=[order_pb2.OrderLine(sku=sku, quantity=1, unit_price=price)],
            currency_code="USD",
            payment_method_token="tok_decline" if args.decline else "tok_approve",
            idempotency_key=f"order-{run}",
        )

        # A bad request is refused with the fields that are wrong, and stores nothing.
        bad = order_pb2.PlaceOrderRequest()
        bad.CopyFrom(order)
        bad.lines[0].quantity = 0
        bad.idempotency_key = f"bad-{run}"
        try:
            zentra.orders.PlaceOrder(bad)
            print("a bad order was accepted", file=sys.stderr)
            return 1
        except ZentraError as error:
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT or not error.field_violations:
                raise
            fields = ", ".join(v.field for v in error.field_violations)
            print(f"bad order refused: {error.code().name} ({fields})")

        order_id = zentra.orders.PlaceOrder(order).order.order_id
        print(f"order {order_id} placed")
        last = None
        for saga in zentra.follow_order(order_id):
            state = saga_pb2.SagaState.Name(saga.state)
            if state != last:
                step = saga_pb2.SagaStepType.Name(saga.current_step)
                print(f"  saga {saga.saga_id}: {state} ({step})")
                last = state
        status = order_pb2.OrderStatus.Name(
            zentra.orders.GetOrder(order_pb2.GetOrderRequest(order_id=order_id)).order.status
        )
        expected = "ORDER_STATUS_REJECTED" if args.decline else "ORDER_STATUS_CONFIRMED"
        print(f"order {order_id}: {status}")
        return 0 if status == expected else 1


if __name__ == "__main__":
    sys.exit(main())
