//! Every metric the runtime records, named and described once.

/// gRPC requests handled, by service, method and status code.
pub const GRPC_REQUESTS: &str = "zentra_grpc_server_requests_total";
/// gRPC requests that ended with a status other than OK.
pub const GRPC_ERRORS: &str = "zentra_grpc_server_errors_total";
/// gRPC request handling time.
pub const GRPC_DURATION: &str = "zentra_grpc_server_request_duration_seconds";
/// Outbox events published to Kafka.
pub const OUTBOX_PUBLISHED: &str = "zentra_outbox_published_total";
/// Histogram: seconds from an outbox event's transaction to the broker's acknowledgement.
pub const OUTBOX_PUBLISH_DELAY: &str = "zentra_outbox_publish_delay_seconds";
/// Histogram: seconds from a record's production (its Kafka timestamp) to a consumer
/// receiving it, by topic.
pub const CONSUMER_FETCH_DELAY: &str = "zentra_consumer_fetch_delay_seconds";
/// Outbox publish rounds that failed.
pub const OUTBOX_FAILURES: &str = "zentra_outbox_publish_failures_total";
/// Events waiting in the outbox, as of the last relay round.
pub const OUTBOX_PENDING: &str = "zentra_outbox_pending";
/// Kafka records the broker acknowledged, from any producer of the process.
pub const KAFKA_PRODUCED: &str = "zentra_kafka_produced_total";
/// Hints that a topic has new records, sent to Redis (or not), by outcome.
pub const WAKE_HINTS: &str = "zentra_wake_hints_total";
/// Times a consumer stopped fetching because it had caught up, by group.
pub const CONSUMER_PAUSES: &str = "zentra_consumer_pauses_total";
/// Kafka messages a consumer processed, by topic and outcome.
pub const CONSUMER_MESSAGES: &str = "zentra_consumer_messages_total";
/// Messages a consumer group has not processed yet, by group, topic and partition.
pub const CONSUMER_LAG: &str = "zentra_consumer_lag";
/// Partitions a consumer group of this process holds the lease of.
pub const CONSUMER_PARTITIONS_OWNED: &str = "zentra_consumer_partitions_owned";
/// The next offset a consumer will process, by group, topic and partition.
pub const CONSUMER_OFFSET: &str = "zentra_consumer_next_offset";
/// Times a consumer found its stored offset past the log's end (the broker lost its log).
pub const CONSUMER_OFFSET_RESETS: &str = "zentra_consumer_offset_resets_total";
/// Producers rebuilt after a fatal error, and topics created again after they vanished.
pub const KAFKA_RECOVERIES: &str = "zentra_kafka_recoveries_total";
/// Events skipped because the inbox had already applied them.
pub const INBOX_DUPLICATES: &str = "zentra_inbox_duplicates_total";
/// Pieces of work committed together by a service's group commit, per transaction.
pub const DB_BATCH_SIZE: &str = "zentra_db_group_commit_batch_size";
/// Faults injected into RPCs, by kind.
pub const FAULTS_APPLIED: &str = "zentra_faults_applied_total";

/// Gauge: seconds the oldest unpublished outbox event has waited (0 when none).
pub const OUTBOX_OLDEST_SECONDS: &str = "zentra_outbox_oldest_pending_seconds";
/// Gauge: dead letters waiting for an operator, by consumer group and source topic.
pub const DEAD_LETTERS_PENDING: &str = "zentra_dead_letters_pending";
/// Gauge: CPU seconds the process has used (user and system).
pub const PROCESS_CPU_SECONDS: &str = "zentra_process_cpu_seconds";
/// Gauge: resident memory of the process.
pub const PROCESS_RESIDENT_BYTES: &str = "zentra_process_resident_memory_bytes";
/// Gauge: file descriptors the process holds open.
pub const PROCESS_OPEN_FDS: &str = "zentra_process_open_fds";
/// Gauge: a circuit breaker's state by downstream: 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "zentra_circuit_breaker_state";
/// Gauge: 1, labelled with the service and its version.
pub const BUILD_INFO: &str = "zentra_build_info";

/// Registers descriptions with the recorder.
pub fn describe() {
    metrics::describe_counter!(
        GRPC_REQUESTS,
        "gRPC requests handled, by service, method and code"
    );
    metrics::describe_counter!(GRPC_ERRORS, "gRPC requests that ended with a non-OK status");
    metrics::describe_histogram!(
        GRPC_DURATION,
        metrics::Unit::Seconds,
        "gRPC request handling time"
    );
    metrics::describe_histogram!(
        DB_BATCH_SIZE,
        "pieces of work (mutating RPCs) committed together in one transaction"
    );
    metrics::describe_counter!(OUTBOX_PUBLISHED, "outbox events published to Kafka");
    metrics::describe_histogram!(
        OUTBOX_PUBLISH_DELAY,
        metrics::Unit::Seconds,
        "time from an outbox event's transaction to the broker's acknowledgement"
    );
    metrics::describe_histogram!(
        CONSUMER_FETCH_DELAY,
        metrics::Unit::Seconds,
        "time from a record's production to a consumer receiving it, by topic"
    );
    metrics::describe_counter!(OUTBOX_FAILURES, "outbox publish rounds that failed");
    metrics::describe_gauge!(OUTBOX_PENDING, "events waiting in the outbox");
    metrics::describe_gauge!(
        OUTBOX_OLDEST_SECONDS,
        metrics::Unit::Seconds,
        "how long the oldest unpublished outbox event has waited"
    );
    metrics::describe_gauge!(
        DEAD_LETTERS_PENDING,
        "dead letters waiting for an operator, by consumer group and source topic"
    );
    metrics::describe_gauge!(
        PROCESS_CPU_SECONDS,
        metrics::Unit::Seconds,
        "CPU time the process has used, user and system"
    );
    metrics::describe_gauge!(
        PROCESS_RESIDENT_BYTES,
        metrics::Unit::Bytes,
        "resident memory of the process"
    );
    metrics::describe_gauge!(PROCESS_OPEN_FDS, "file descriptors the process holds open");
    metrics::describe_gauge!(
        BREAKER_STATE,
        "circuit breaker state by downstream: 0 closed, 1 half-open, 2 open"
    );
    metrics::describe_gauge!(BUILD_INFO, "1, labelled with the service and its version");
    metrics::describe_counter!(
        CONSUMER_MESSAGES,
        "Kafka messages processed, by topic and outcome"
    );
    metrics::describe_counter!(
        KAFKA_PRODUCED,
        "Kafka records the broker acknowledged, from any producer of the process, by topic"
    );
    metrics::describe_counter!(
        WAKE_HINTS,
        "hints that a topic has new records, by outcome (sent, unsent)"
    );
    metrics::describe_counter!(
        CONSUMER_PAUSES,
        "times a consumer stopped fetching because it had caught up, by group"
    );
    metrics::describe_gauge!(
        CONSUMER_LAG,
        "messages a consumer group has not processed yet, by group, topic and partition"
    );
    metrics::describe_gauge!(
        CONSUMER_PARTITIONS_OWNED,
        "partitions a consumer group of this process holds the lease of"
    );
    metrics::describe_gauge!(
        CONSUMER_OFFSET,
        "next offset a consumer will process, by group, topic and partition"
    );
    metrics::describe_counter!(
        CONSUMER_OFFSET_RESETS,
        "stored offsets found past the log's end (the broker lost its log)"
    );
    metrics::describe_counter!(
        KAFKA_RECOVERIES,
        "producers rebuilt after a fatal error and topics created again, by kind"
    );
    metrics::describe_counter!(INBOX_DUPLICATES, "events skipped as already applied");
    metrics::describe_counter!(FAULTS_APPLIED, "faults injected into RPCs, by kind");
}
