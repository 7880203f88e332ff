//! The source side of a source-initiated link (a source behind a firewall): this broker dials
//! out to the destination's link listener, says Hello as the source, and then serves the
//! connection exactly as if the destination had dialled in (`source::serve_established`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use mirror_protocol::{capabilities, EncodeOptions, Frame, Hello, Role};

use super::destination::{retry_forever, transport_settings, Fatal};
use super::framing::{read_frame, write_frame};
use super::source::{frame_name, serve_established, SourceContext};
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
    let identity = agent.identity.as_ref().ok_or_else(|| {
        Fatal("this broker has no link certificate: start it with --link-ca, --link-cert and --link-key".into())
    })?;
    let remote: SocketAddr = tokio::net::lookup_host(destination)
        .await
        .with_context(|| format!("cannot resolve the destination address {destination}"))?
        .next()
        .ok_or_else(|| anyhow!("{destination} resolves to no address"))?;
    let client = mirror_protocol::client_config(identity, &transport_settings(agent, spec))
        .map_err(|e| Fatal(format!("link TLS configuration: {e}")))?;
    let bind: SocketAddr = if remote.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let mut endpoint = quinn::Endpoint::client(bind).context("opening a UDP socket")?;
    endpoint.set_default_client_config(client);
    let result = async {
        let connecting = endpoint
            .connect(remote, &spec.server_name)
            .context("starting the connection")?;
        let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .map_err(|_| anyhow!("no answer from the destination at {remote} within 5 s"))?
            .with_context(|| format!("connecting to the destination at {remote}"))?;
        let (mut send, mut recv) = conn.open_bi().await.context("opening the control stream")?;
        write_frame(
            &mut send,
            &Frame::Hello(Hello {
                min_version: agent.versions.0,
                max_version: agent.versions.1,
                link_name: spec.name.clone(),
                cluster_id: agent.broker.cluster_id.clone(),
                role: Role::Source,
                capabilities: capabilities::ZSTD | capabilities::SOURCE_INITIATED,
            }),
            &EncodeOptions::default(),
            &agent.limits,
            &mut Vec::new(),
        )
        .await
        .context("sending Hello")?;
        let ok = match read_frame(&mut recv, &agent.limits)
            .await
            .context("waiting for the destination's answer to Hello (a TLS refusal shows up here)")?
        {
            Some((Frame::HelloOk(ok), _)) => ok,
            Some((Frame::Reject(r), _)) => {
                return Err(Fatal(format!(
                    "the destination refused the link ({:?}): {}",
                    r.code, r.message
                ))
                .into())
            }
            Some((other, _)) => bail!("protocol error: expected HelloOk, got {}", frame_name(&other)),
            None => bail!("the destination closed the control stream during the handshake"),
        };
        tracing::info!(link = %spec.name, destination_cluster = %ok.cluster_id, "dialled out to the destination");
        shared.connected(ok.cluster_id);
        serve_established(conn, send, recv, SourceContext::new(agent.clone()), spec.name.clone()).await
    }
    .await;
    endpoint.close(quinn::VarInt::from_u32(0), b"link stopped");
    result
}
