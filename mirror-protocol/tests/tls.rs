//! Loopback QUIC with mutual TLS built by `server_config`/`client_config` (rcgen test PKI):
//! a client from the link's CA connects and speaks the protocol over the negotiated ALPN; a
//! client with a certificate from another CA, or with none, is refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mirror_protocol::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;

const STEP_TIMEOUT: Duration = Duration::from_secs(10);

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// (certificate PEM, key PEM) of a leaf signed by `ca`.
fn leaf(ca: &Ca, san: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![san.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, san);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn identity(trusted: &Ca, (cert, key): &(String, String)) -> Identity {
    Identity::from_pem(trusted.pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap()
}

fn loopback_settings() -> TransportSettings {
    TransportSettings {
        rtt: Duration::from_millis(1),
        ..TransportSettings::default()
    }
}

/// Accepts connections; on each, answers the first Hello with HelloOk naming how many
/// certificates the client presented.
async fn serve(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            let presented = connection
                .peer_identity()
                .and_then(|id| id.downcast::<Vec<rustls::pki_types::CertificateDer>>().ok())
                .map_or(0, |chain| chain.len());
            let Ok((mut send, mut recv)) = connection.accept_bi().await else {
                return;
            };
            if let Ok(Frame::Hello(_)) = read_frame(&mut recv).await {
                let reply = Frame::HelloOk(HelloOk {
                    version: PROTOCOL_VERSION,
                    cluster_id: format!("presented-{presented}"),
                    capabilities: capabilities::ZSTD,
                });
                let mut out = Vec::new();
                encode_frame(
                    &reply,
                    &EncodeOptions::default(),
                    &Limits::default(),
                    &mut out,
                )
                .unwrap();
                let _ = send.write_all(&out).await;
                let _ = send.finish();
            }
            connection.closed().await;
        });
    }
}

async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Frame, String> {
    let mut decoder = FrameDecoder::new(Limits::default());
    let mut buf = [0u8; 4096];
    for _ in 0..1000 {
        if let Some(frame) = decoder.next_frame().map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        match recv.read(&mut buf).await.map_err(|e| e.to_string())? {
            Some(n) => decoder.push(&buf[..n]),
            None => return Err("stream ended".into()),
        }
    }
    Err("too many reads".into())
}

/// Connects, checks the ALPN, sends Hello, returns the answer (or why it failed).
async fn hello_exchange(config: quinn::ClientConfig, server: SocketAddr) -> Result<Frame, String> {
    let exchange = async {
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
        endpoint.set_default_client_config(config);
        let connection = endpoint
            .connect(server, "localhost")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let alpn = connection
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|data| data.protocol);
        assert_eq!(alpn.as_deref(), Some(ALPN));
        // With TLS 1.3 the client may see the handshake complete before the server has checked
        // its certificate: a refusal then shows on the first stream operation.
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        let hello = Frame::Hello(Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            link_name: "eu-to-us".into(),
            cluster_id: "dest".into(),
            role: Role::Destination,
            capabilities: capabilities::ZSTD,
        });
        let mut out = Vec::new();
        encode_frame(
            &hello,
            &EncodeOptions::default(),
            &Limits::default(),
            &mut out,
        )
        .unwrap();
        send.write_all(&out).await.map_err(|e| e.to_string())?;
        let answer = read_frame(&mut recv).await;
        connection.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        answer
    };
    tokio::time::timeout(STEP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_of_the_link_ca() {
    let link_ca = ca("link CA");
    let other_ca = ca("other CA");
    let server_id = identity(&link_ca, &leaf(&link_ca, "localhost"));
    let server = quinn::Endpoint::server(
        server_config(&server_id, &loopback_settings()).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let address = server.local_addr().unwrap();
    let server_task = tokio::spawn(serve(server.clone()));

    // Good pair: same CA on both sides (loaded from files, as the agent does).
    let dir = std::env::temp_dir().join(format!("mirror-protocol-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = leaf(&link_ca, "link-agent");
    std::fs::write(dir.join("ca.pem"), &link_ca.pem).unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let good = Identity::from_pem_files(
        &dir.join("ca.pem"),
        &dir.join("cert.pem"),
        &dir.join("key.pem"),
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let answer = hello_exchange(client_config(&good, &loopback_settings()).unwrap(), address).await;
    match answer {
        Ok(Frame::HelloOk(ok)) => assert_eq!(ok.cluster_id, "presented-1"),
        other => panic!("good client: {other:?}"),
    }

    // A client trusting the link CA but holding a certificate from another CA.
    let foreign = identity(&link_ca, &leaf(&other_ca, "link-agent"));
    let answer = hello_exchange(
        client_config(&foreign, &loopback_settings()).unwrap(),
        address,
    )
    .await;
    let error = answer.expect_err("client with a foreign certificate was admitted");
    assert_ne!(error, "timeout", "refusal must be prompt");
    println!("foreign-CA client refused: {error}");

    // A client with no certificate at all.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(link_ca.pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let anonymous = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let answer = hello_exchange(anonymous, address).await;
    let error = answer.expect_err("client without a certificate was admitted");
    assert_ne!(error, "timeout", "refusal must be prompt");
    println!("certificate-less client refused: {error}");

    // The client also refuses a server outside its CA.
    let other_server_client = identity(&other_ca, &leaf(&other_ca, "link-agent"));
    let answer = hello_exchange(
        client_config(&other_server_client, &loopback_settings()).unwrap(),
        address,
    )
    .await;
    assert!(answer.is_err(), "client trusted a server from another CA");

    server.close(0u32.into(), b"test over");
    server_task.abort();
}
