// Zentra's gateway from TypeScript: `connect(address, apiKey)` gives typed clients of the public
// services over gRPC (Node, HTTP/2) or grpc-web (browsers, or Node with fetch). Failed calls throw
// ZentraError. The messages are in "@zentra/client/gen/zentra/<service>/v1/<file>_pb.js".
import type { DescService } from "@bufbuild/protobuf";
import { Code, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { InventoryService } from "./gen/zentra/inventory/v1/inventory_pb.js";
import { OrderService } from "./gen/zentra/order/v1/order_pb.js";
import { type Saga, SagaService, SagaState } from "./gen/zentra/saga/v1/saga_pb.js";
import { ZentraError } from "./errors.js";

export { ZentraError, type FieldViolation } from "./errors.js";

/** Saga states after which nothing more happens to the saga on its own. */
export const ENDED: ReadonlySet<SagaState> = new Set([
  SagaState.COMPLETED,
  SagaState.COMPENSATED,
  SagaState.COMPENSATION_FAILED,
]);

/** "grpc": HTTP/2, from Node. "grpc-web": HTTP/1.1 with fetch, as browsers call. */
export type Protocol = "grpc" | "grpc-web";

export interface ConnectOptions {
  /** Default "grpc". */
  protocol?: Protocol;
}

/** The gateway's public services. */
export interface ZentraClient {
  orders: Client<typeof OrderService>;
  inventory: Client<typeof InventoryService>;
  sagas: Client<typeof SagaService>;
  /**
   * Yields the order's saga at every change until it has ended. Waits for the saga to start and
   * watches again when the stream breaks; gives up after `timeoutMs`.
   */
  followOrder(orderId: string, timeoutMs?: number): AsyncGenerator<Saga>;
}

/**
 * A client of the gateway at `address` ("http://127.0.0.1:8080"; a bare "host:port" means http),
 * calling with `apiKey`.
 */
export function connect(address: string, apiKey: string, options: ConnectOptions = {}): ZentraClient {
  const baseUrl = address.includes("://") ? address : `http://${address}`;
  const interceptors = [withKey(apiKey)];
  const transport: Transport =
    (options.protocol ?? "grpc") === "grpc"
      ? createGrpcTransport({ baseUrl, interceptors })
      : createGrpcWebTransport({ baseUrl, interceptors });
  const client = <T extends DescService>(service: T) => typed(createClient(service, transport));
  const sagas = client(SagaService);
  return {
    orders: client(OrderService),
    inventory: client(InventoryService),
    sagas,
    async *followOrder(orderId: string, timeoutMs = 120_000) {
      const deadline = Date.now() + timeoutMs;
      let pauseMs = 200;
      for (;;) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`the saga of order ${orderId} did not end in ${timeoutMs} ms`);
        let waitMs = pauseMs;
        try {
          for await (const update of sagas.watchSaga({ orderId }, { timeoutMs: left })) {
            if (!update.saga) continue;
            pauseMs = 200;
            yield update.saga;
            if (ENDED.has(update.saga.state)) return;
          }
          // The stream ended before the saga did (its server is stopping): watch again.
        } catch (error) {
          if (error instanceof ZentraError && error.code === Code.DeadlineExceeded && Date.now() >= deadline) {
            continue;
          }
          // NOT_FOUND until the saga has started; UNAVAILABLE while a service restarts.
          if (!(error instanceof ZentraError) || ![Code.NotFound, Code.Unavailable].includes(error.code)) {
            throw error;
          }
          waitMs = error.retryDelayMs ?? pauseMs;
        }
        await new Promise((resolve) => setTimeout(resolve, Math.min(waitMs, Math.max(deadline - Date.now(), 0))));
        pauseMs = Math.min(pauseMs * 2, 2_000);
      }
    },
  };
}

function withKey(apiKey: string): Interceptor {
  return (next) => (request) => {
    request.header.set("x-api-key", apiKey);
    return next(request);
  };
}

/**
 * The client with every failed call (and failed stream, at the message where it fails) thrown as
 * ZentraError. Not an interceptor: connect-es wraps whatever an interceptor throws back into a
 * ConnectError.
 */
function typed<T extends object>(client: T): T {
  return new Proxy(client, {
    get(target, property, receiver) {
      const method: unknown = Reflect.get(target, property, receiver);
      if (typeof method !== "function") return method;
      return (...args: unknown[]) => {
        const result: unknown = method.apply(target, args);
        if (result instanceof Promise) {
          return result.catch((error: unknown) => {
            throw ZentraError.from(error);
          });
        }
        if (result && typeof result === "object" && Symbol.asyncIterator in result) {
          const stream = result as AsyncIterable<unknown>;
          return (async function* () {
            try {
              yield* stream;
            } catch (error) {
              throw ZentraError.from(error);
            }
          })();
        }
        return result;
      };
    },
  });
}
