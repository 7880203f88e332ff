//! The source side of a source-initiated link (a source behind a firewall): this broker dials
//! out to the destination's link listener, says Hello as the source, and then serves the
//! connection exactly as if the destination had dialled in (`source::serve_established`).

use std::sync::Arc;

use anyhow::Result;
use mirror_protocol::Role;

use super::destination::{dial, retry_forever, Fatal};
use super::source::{serve_established, SourceContext};
use super::status::LinkShared;
use super::AgentShared;
use crate::model::LinkSpec;

/// Runs an outbound (source-side) link until aborted, redialling with backoff.
pub async fn run_outbound(agent: Arc<AgentShared>, spec: LinkSpec, shared: Arc<LinkShared>) {
    retry_forever(&spec, &shared, || dial_and_serve(&agent, &spec, &shared)).await
}

async fn dial_and_serve(
    agent: &Arc<AgentShared>,
    spec: &LinkSpec,
    shared: &Arc<LinkShared>,
) -> Result<()> {
    let destination = spec
        .dial_destination
        .as_deref()
        .ok_or_else(|| Fatal("an outbound link needs a destination address".into()))?;
    let dialled = dial(agent, spec, destination, Role::Source).await?;
    tracing::info!(link = %spec.name, destination_cluster = %dialled.hello_ok.cluster_id, "dialled out to the destination");
    shared.connected(dialled.hello_ok.cluster_id.clone());
    let result = serve_established(
        dialled.conn,
        dialled.send,
        dialled.recv,
        SourceContext::new(agent.clone()),
        spec.name.clone(),
        dialled.hello_ok.version,
    )
    .await;
    dialled
        .endpoint
        .close(quinn::VarInt::from_u32(0), b"link stopped");
    result
}
