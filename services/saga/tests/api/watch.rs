//! Watch streams at scale: a thousand watchers share one change feed, so the saga database sees
//! the reads of one; the process serves only so many streams; a stream ends at its deadline.

use std::time::{Duration, Instant};

use futures::{StreamExt as _, stream::FuturesUnordered};
use tonic::{Code, Request, transport::Channel};
use tonic_types::StatusExt as _;
use zentra_proto::saga::v1::{self as pb, saga_service_client::SagaServiceClient};
use zentra_test_support::http_get;

use crate::helpers::{Stack, StackOptions};

const WATCHERS: usize = 1000;
/// Streams per HTTP/2 connection, below the server's `max_concurrent_streams` (256).
const PER_CONNECTION: usize = 125;

/// The value of a counter or gauge with `labels` in a Prometheus exposition.
fn metric(exposition: &str, name: &str, labels: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn watch_reads(stack: &Stack, by: &str) -> f64 {
    let (_, body) = http_get(stack.saga_addr(), "/metrics").await;
    metric(
        &body,
        "zentra_saga_watch_reads_total",
        &format!("by=\"{by}\""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_watchers_share_one_feed_and_more_are_refused_with_retry_info() {
    let options = StackOptions {
        watch_max_streams: WATCHERS,
        ..StackOptions::default()
    };
    let stack = Stack::start("saga-watchers", options).await;
    stack.create_product("WATCH-1", 10).await;
    let url = format!("http://{}", stack.saga_addr());
    let mut clients = Vec::new();
    for _ in 0..WATCHERS.div_ceil(PER_CONNECTION) {
        let channel = Channel::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connects");
        clients.push(SagaServiceClient::new(channel));
    }
    let reads_before = watch_reads(&stack, "feed").await;
    let opened = Instant::now();
    let mut streams = Vec::with_capacity(WATCHERS);
    for index in 0..WATCHERS {
        let mut client = clients[index / PER_CONNECTION].clone();
        let stream = client
            .watch_sagas(pb::WatchSagasRequest::default())
            .await
            .expect("a watcher within the limit is served")
            .into_inner();
        streams.push(stream);
    }

    // One more is refused, and told when to try again.
    let refused = clients[0]
        .clone()
        .watch_sagas(pb::WatchSagasRequest::default())
        .await
        .expect_err("over the limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.get_error_details().retry_info().is_some());

    // Every watcher hears the saga end.
    let order_id = stack.place_order("WATCH-1", 1, "tok_approve", "US").await;
    let completed = pb::SagaState::Completed as i32;
    let mut heard: FuturesUnordered<_> = streams
        .into_iter()
        .map(|mut stream| {
            let order_id = order_id.clone();
            async move {
                while let Some(Ok(message)) = stream.next().await {
                    let saga = message.saga.expect("saga");
                    if saga.order_id == order_id && saga.state == completed {
                        return Some(stream);
                    }
                }
                None
            }
        })
        .collect();
    let mut still_open = Vec::with_capacity(WATCHERS);
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    while still_open.len() < WATCHERS {
        tokio::select! {
            next = heard.next() => match next {
                Some(Some(stream)) => still_open.push(stream),
                Some(None) => panic!("a watch stream ended before the saga did"),
                None => break,
            },
            () = &mut deadline => panic!("{} of {WATCHERS} watchers heard the saga end", still_open.len()),
        }
    }

    // The feed's reads are those of one poller, however many watch: at most a look at the
    // changes and a read of the changed sagas per poll (every 250 ms), whatever the count.
    let elapsed = opened.elapsed();
    let feed_reads = watch_reads(&stack, "feed").await - reads_before;
    let polls = elapsed.as_secs_f64() / 0.25 + 1.0;
    eprintln!(
        "{WATCHERS} watchers for {elapsed:?}: {feed_reads} feed reads ({:.1}/s), {} stream reads",
        feed_reads / elapsed.as_secs_f64(),
        watch_reads(&stack, "stream").await
    );
    assert!(
        feed_reads <= 2.0 * polls + 4.0,
        "{feed_reads} reads in {polls:.0} polls: the feed is not shared"
    );
    assert_eq!(
        watch_reads(&stack, "stream").await,
        0.0,
        "no stream read the table on its own"
    );
    // Streams are counted, but kept out of the latency histogram, which is for unary calls.
    let (_, exposition) = http_get(stack.saga_addr(), "/metrics").await;
    let watch = "method=\"WatchSagas\"";
    assert!(
        metric(&exposition, "zentra_grpc_server_requests_total", watch) >= WATCHERS as f64,
        "every stream is counted"
    );
    assert!(
        !exposition.lines().any(|line| line
            .starts_with("zentra_grpc_server_request_duration_seconds")
            && line.contains(watch)),
        "a stream's start is not a unary latency"
    );

    // Closed streams give their places back.
    drop(still_open);
    let mut client = clients[0].clone();
    let reopened = zentra_test_support::eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            client
                .watch_sagas(pb::WatchSagasRequest::default())
                .await
                .ok()
        }
    })
    .await;
    assert!(reopened.is_some(), "places came back");

    // A stream ends at its caller's deadline.
    let mut request = Request::new(pb::WatchSagasRequest::default());
    request.set_timeout(Duration::from_secs(1));
    let mut short = client
        .watch_sagas(request)
        .await
        .expect("served")
        .into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(_)) = short.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its deadline");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_id_finds_its_saga_to_get_and_to_watch() {
    use zentra_test_support::violated_fields;

    let stack = Stack::start("saga-by-order", StackOptions::default()).await;
    stack.create_product("BYORDER-1", 5).await;
    let order_id = stack.place_order("BYORDER-1", 1, "tok_approve", "US").await;
    let started = stack.saga_of(&order_id).await;
    let mut sagas = stack.sagas.clone();

    // What a caller of PlaceOrder knows is enough to get the saga and follow it to its end.
    let got = sagas
        .get_saga(pb::GetSagaRequest {
            order_id: order_id.clone(),
            ..Default::default()
        })
        .await
        .expect("the order's saga")
        .into_inner()
        .saga
        .expect("saga");
    assert_eq!(got.saga_id, started.saga_id);
    let mut stream = sagas
        .watch_saga(pb::WatchSagaRequest {
            order_id: order_id.clone(),
            ..Default::default()
        })
        .await
        .expect("watching by order")
        .into_inner();
    let completed = pb::SagaState::Completed as i32;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(update) = stream.next().await {
            let saga = update.expect("update").saga.expect("saga");
            assert_eq!(saga.saga_id, started.saga_id);
            if saga.state == completed {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ended, Ok(true), "the stream followed the saga to its end");

    // Exactly one of the two ids, well formed; an order without a saga is NOT_FOUND.
    for (request, field) in [
        (
            pb::GetSagaRequest {
                saga_id: started.saga_id.clone(),
                order_id: order_id.clone(),
            },
            "order_id",
        ),
        (pb::GetSagaRequest::default(), "saga_id"),
        (
            pb::GetSagaRequest {
                order_id: "not-a-uuid".to_owned(),
                ..Default::default()
            },
            "order_id",
        ),
    ] {
        let refused = sagas.get_saga(request).await.expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert_eq!(violated_fields(&refused), [field]);
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    let missing = sagas
        .watch_saga(pb::WatchSagaRequest {
            order_id: unknown.clone(),
            ..Default::default()
        })
        .await
        .expect_err("no saga");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert!(missing.message().contains(&unknown), "{missing:?}");
    stack.stop().await;
}
