// Places an order through the gateway and follows its saga to the end.
//
//   source <state dir>/dev-keys.env            # written by `just up`
//   node dist/examples/order_and_follow.js [--address http://127.0.0.1:8080] [--grpc-web] [--decline]
//
// It creates a product of its own (a SKU unique to the run), shows how a bad request is refused
// (the field violations, typed), places an order paid with an approving token (or a declining one
// with --decline), prints every state of its saga, and returns the order's final status.
import { realpathSync } from "node:fs";
import { pathToFileURL } from "node:url";

import { Code } from "@connectrpc/connect";

import { connect, type Protocol, ZentraError } from "../index.js";
import { OrderStatus } from "../gen/zentra/order/v1/order_pb.js";
import { SagaState, SagaStepType } from "../gen/zentra/saga/v1/saga_pb.js";

export interface Options {
  address: string;
  apiKey: string;
  protocol: Protocol;
  decline: boolean;
  log?: (line: string) => void;
}

/** Runs the example; resolves to the order's final status. */
export async function orderAndFollow(options: Options): Promise<OrderStatus> {
  const log = options.log ?? console.log;
  const zentra = connect(options.address, options.apiKey, { protocol: options.protocol });
  const run = Math.random().toString(36).slice(2, 10).toUpperCase();
  const price = { currencyCode: "USD", amountMinor: 1299n };
  const sku = `TS-${run}`;
  await zentra.inventory.createProduct({
    sku,
    name: "TypeScript mug",
    initialStock: 10n,
    unitPrice: price,
    idempotencyKey: `product-${run}`,
  });
  const order = {
    customerId: `ts-${run.toLowerCase()}`,
    customerEmail: `ts-${run.toLowerCase()}@customers.zentra.test`,
    shippingAddress: {
      recipient: "Ada",
      lines: ["1 Main St"],
      city: "Springfield",
      postalCode: "12345",
      countryCode: "US",
    },
    lines: [{ sku, quantity: 1n, unitPrice: price }],
    currencyCode: "USD",
    paymentMethodToken: options.decline ? "tok_decline" : "tok_approve",
    idempotencyKey: `order-${run}`,
  };

  // A bad request is refused with the fields that are wrong, and stores nothing.
  try {
    await zentra.orders.placeOrder({
      ...order,
      lines: [{ sku, quantity: 0n, unitPrice: price }],
      idempotencyKey: `bad-${run}`,
    });
    throw new Error("a bad order was accepted");
  } catch (error) {
    if (!(error instanceof ZentraError) || error.code !== Code.InvalidArgument || error.fieldViolations.length === 0) {
      throw error;
    }
    log(`bad order refused: ${Code[error.code]} (${error.fieldViolations.map((v) => v.field).join(", ")})`);
  }

  const placed = await zentra.orders.placeOrder(order);
  const orderId = placed.order?.orderId ?? "";
  log(`order ${orderId} placed over ${options.protocol}`);
  let last: SagaState | undefined;
  for await (const saga of zentra.followOrder(orderId)) {
    if (saga.state !== last) {
      log(`  saga ${saga.sagaId}: ${SagaState[saga.state]} (${SagaStepType[saga.currentStep]})`);
      last = saga.state;
    }
  }
  const status = (await zentra.orders.getOrder({ orderId })).order?.status ?? OrderStatus.UNSPECIFIED;
  log(`order ${orderId}: ${OrderStatus[status]}`);
  return status;
}

async function main(args: string[]): Promise<number> {
  const apiKey = process.env.ZENTRA_OPERATOR_KEY;
  if (!apiKey) {
    console.error("ZENTRA_OPERATOR_KEY is not set: source the dev-keys.env `just up` wrote");
    return 2;
  }
  const at = args.indexOf("--address");
  const address = at >= 0 ? args[at + 1] : (process.env.ZENTRA_GATEWAY ?? "http://127.0.0.1:8080");
  const decline = args.includes("--decline");
  const status = await orderAndFollow({
    address,
    apiKey,
    protocol: args.includes("--grpc-web") ? "grpc-web" : "grpc",
    decline,
  });
  return status === (decline ? OrderStatus.REJECTED : OrderStatus.CONFIRMED) ? 0 : 1;
}

// Run as a program (not imported by the tests): the module is the file node was started with.
if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  process.exitCode = await main(process.argv.slice(2));
}
