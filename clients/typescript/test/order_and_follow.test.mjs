// The example against a running platform (`just up`; the smoke test runs it on its own stack):
// an approved and a declined order, each over gRPC and over grpc-web, followed to their ends.
// Needs ZENTRA_OPERATOR_KEY (source dev-keys.env) and, unless the gateway is on :8080,
// ZENTRA_GATEWAY.
import assert from "node:assert/strict";
import { test } from "node:test";

import { orderAndFollow } from "../dist/examples/order_and_follow.js";
import { OrderStatus } from "../dist/gen/zentra/order/v1/order_pb.js";

const apiKey = process.env.ZENTRA_OPERATOR_KEY;
const address = process.env.ZENTRA_GATEWAY ?? "http://127.0.0.1:8080";

for (const protocol of ["grpc", "grpc-web"]) {
  for (const [decline, expected] of [
    [false, OrderStatus.CONFIRMED],
    [true, OrderStatus.REJECTED],
  ]) {
    test(`an order paid with ${decline ? "a declined" : "an approved"} token ends ${OrderStatus[expected]} over ${protocol}`, async () => {
      assert.ok(apiKey, "ZENTRA_OPERATOR_KEY is not set: source the dev-keys.env `just up` wrote");
      const lines = [];
      const status = await orderAndFollow({ address, apiKey, protocol, decline, log: (line) => lines.push(line) });
      console.log(lines.join("\n"));
      assert.equal(OrderStatus[status], OrderStatus[expected]);
      assert.match(lines[0], /^bad order refused: InvalidArgument \(lines\[0\]\.quantity\)$/);
    });
  }
}
