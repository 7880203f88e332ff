//! Fetch: read whole batches from each requested partition, up to the high watermark, honouring
//! the request's and each partition's byte limits, and long-poll until `min_bytes` are available
//! or `max_wait_ms` passes.
//!
//! Fetch sessions (KIP-227) are declined: every response carries session id 0, which tells the
//! client to keep sending full fetch requests. An incremental request for a session id is
//! answered with FETCH_SESSION_ID_NOT_FOUND so the client starts over.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProducerId};
use tokio::time::Instant;

use super::{encode_response, error_code, Ctx, ProtocolError, Reply};
use crate::broker::BrokerError;

/// Upper bound on how long one fetch may wait, whatever the client asks.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);

struct Collected {
    body: FetchResponse,
    bytes: usize,
    any_error: bool,
}

fn collect(ctx: &Ctx, req: &FetchRequest) -> Collected {
    let read_committed = req.isolation_level == 1;
    let mut remaining = if req.max_bytes > 0 {
        req.max_bytes as usize
    } else {
        usize::MAX
    };
    let mut total = 0usize;
    let mut any_error = false;
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let mut data = PartitionData::default().with_partition_index(p.partition);
            let result = ctx
                .broker
                .partition(&t.topic, p.partition)
                .and_then(|partition| {
                    let offsets = partition.offsets();
                    // After the first batch, respect the overall limit strictly (KIP-74).
                    let limit = (p.partition_max_bytes.max(0) as usize).min(remaining);
                    let (records, aborted) = if total > 0 && limit == 0 {
                        (Vec::new(), Vec::new())
                    } else {
                        partition.read(p.fetch_offset, limit.max(1), read_committed)?
                    };
                    Ok::<_, BrokerError>((offsets, records, aborted))
                });
            match result {
                Ok((offsets, records, aborted)) => {
                    total += records.len();
                    remaining = remaining.saturating_sub(records.len());
                    data = data
                        .with_high_watermark(offsets.high_watermark)
                        .with_last_stable_offset(offsets.last_stable_offset)
                        .with_records(Some(Bytes::from(records)));
                    if ctx.version >= 5 {
                        data = data.with_log_start_offset(offsets.log_start_offset);
                    }
                    if read_committed {
                        data = data.with_aborted_transactions(Some(
                            aborted
                                .iter()
                                .map(|a| {
                                    AbortedTransaction::default()
                                        .with_producer_id(ProducerId(a.producer_id))
                                        .with_first_offset(a.first_offset)
                                })
                                .collect(),
                        ));
                    }
                }
                Err(e) => {
                    any_error = true;
                    tracing::debug!(topic = %t.topic.as_str(), partition = p.partition, error = %e, "fetch error");
                    data = data
                        .with_error_code(error_code(&e))
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1)
                        .with_records(Some(Bytes::new()));
                }
            }
            parts.push(data);
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_partitions(parts),
        );
    }
    Collected {
        body: FetchResponse::default().with_responses(topics),
        bytes: total,
        any_error,
    }
}

pub(super) fn fetch(ctx: Ctx, req: FetchRequest) -> Result<Reply, ProtocolError> {
    if ctx.version >= 7 && req.session_id != 0 {
        let body =
            FetchResponse::default().with_error_code(ResponseError::FetchSessionIdNotFound.code());
        return ctx.respond(&body);
    }
    let min_bytes = req.min_bytes.max(0) as usize;
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    Ok(Reply::Later(Box::pin(async move {
        let deadline = Instant::now() + wait;
        loop {
            // Register for wake-ups before looking, so an append in between is not missed.
            let notified = ctx.broker.data_arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let c = collect(&ctx, &req);
            if c.bytes >= min_bytes || c.any_error {
                return encode_response(ctx.correlation_id, ctx.version, &c.body).map(Some);
            }
            if Instant::now() >= deadline
                || tokio::time::timeout_at(deadline, notified).await.is_err()
            {
                let c = collect(&ctx, &req);
                return encode_response(ctx.correlation_id, ctx.version, &c.body).map(Some);
            }
        }
    })))
}
