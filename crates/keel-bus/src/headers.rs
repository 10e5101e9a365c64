//! Header names Keel puts on NATS messages.

/// W3C trace context, so one trace spans gRPC and NATS hops.
pub const TRACEPARENT: &str = "traceparent";
/// Why a message was dead-lettered.
pub const DLQ_REASON: &str = "Keel-Dlq-Reason";
/// Stream, sequence, subject, consumer and delivery count of the original message.
pub const DLQ_STREAM: &str = "Keel-Dlq-Stream";
pub const DLQ_SEQUENCE: &str = "Keel-Dlq-Sequence";
pub const DLQ_SUBJECT: &str = "Keel-Dlq-Subject";
pub const DLQ_CONSUMER: &str = "Keel-Dlq-Consumer";
pub const DLQ_DELIVERIES: &str = "Keel-Dlq-Deliveries";
