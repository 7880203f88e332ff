//! QUIC endpoint configuration for link agents: mutual TLS 1.3 (ring provider only, every peer
//! must present a certificate chained to the link's CA), the link ALPN, and transport windows
//! sized to the path's bandwidth-delay product. Builds configurations only; opens no sockets.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::error::TlsError;
use crate::frame::ALPN;

/// Largest PEM input accepted (CA bundle, chain or key).
pub const MAX_PEM_BYTES: usize = 1 << 20;
/// Smallest per-stream window, whatever the configured path (quinn's default).
const MIN_STREAM_WINDOW: u64 = 1_250_000;

/// Our TLS identity on a link: the CA(s) a peer's certificate must chain to, our certificate
/// chain (leaf first) and our private key.
pub struct Identity {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("ca_certificates", &self.roots.len())
            .field("chain_certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Identity {
    /// Reads PEM files: the CA certificate(s) we trust for the peer, our certificate chain, our
    /// PKCS#8 (or any rustls-supported) private key. Errors name the file and what was wrong.
    pub fn from_pem_files(ca: &Path, cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let ca_pem = read_pem_file(ca, "CA certificate")?;
        let cert_pem = read_pem_file(cert, "certificate chain")?;
        let key_pem = read_pem_file(key, "private key")?;
        Self::parse(
            (&ca_pem, &ca.display().to_string()),
            (&cert_pem, &cert.display().to_string()),
            (&key_pem, &key.display().to_string()),
        )
    }

    /// Same as [`from_pem_files`](Self::from_pem_files), from PEM text in memory.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Identity, TlsError> {
        Self::parse((ca, "CA PEM"), (cert, "certificate PEM"), (key, "key PEM"))
    }

    fn parse(
        (ca, ca_origin): (&[u8], &str),
        (cert, cert_origin): (&[u8], &str),
        (key, key_origin): (&[u8], &str),
    ) -> Result<Identity, TlsError> {
        let ca_certs = parse_certificates(ca, "CA certificate", ca_origin)?;
        let mut roots = RootCertStore::empty();
        for ca_cert in ca_certs {
            roots.add(ca_cert).map_err(|source| TlsError::Rustls {
                what: "CA certificate",
                source,
            })?;
        }
        let chain = parse_certificates(cert, "certificate chain", cert_origin)?;
        check_size(key, "private key", key_origin)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|error| TlsError::Pem {
            what: "private key",
            origin: key_origin.to_string(),
            reason: error.to_string(),
        })?;
        // Fail now, naming the file, rather than when the first endpoint is built.
        provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|error| TlsError::Pem {
                what: "private key",
                origin: key_origin.to_string(),
                reason: error.to_string(),
            })?;
        Ok(Identity {
            roots: Arc::new(roots),
            chain,
            key,
        })
    }
}

fn read_pem_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let read_error = |source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut contents = Vec::new();
    file.take(MAX_PEM_BYTES as u64 + 1)
        .read_to_end(&mut contents)
        .map_err(read_error)?;
    Ok(contents)
}

fn check_size(pem: &[u8], what: &'static str, origin: &str) -> Result<(), TlsError> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            what,
            origin: origin.to_string(),
            max: MAX_PEM_BYTES,
        });
    }
    Ok(())
}

fn parse_certificates(
    pem: &[u8],
    what: &'static str,
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    check_size(pem, what, origin)?;
    let pem_error = |reason: String| TlsError::Pem {
        what,
        origin: origin.to_string(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(error.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no CERTIFICATE section found".to_string()));
    }
    Ok(certs)
}

/// The network path a link runs over, and QUIC limits derived from it.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// Expected round-trip time; default 100 ms.
    pub rtt: Duration,
    /// Expected bandwidth; default 125 000 000 B/s (1 Gbit/s).
    pub bandwidth_bytes_per_sec: u64,
    /// Connection closed after this long without packets; default 10 s (zero: never).
    pub idle_timeout: Duration,
    /// Keep-alive ping interval; default 2 s (zero: none).
    pub keep_alive: Duration,
    /// UDP generic segmentation offload; default false (userspace UDP relays stalled with it).
    pub segmentation_offload: bool,
    /// Bidirectional streams a peer may open at once; default 256.
    pub max_concurrent_streams: u32,
    /// Congestion controller; default BBR (random WAN loss does not collapse its rate the way
    /// it collapses loss-based Cubic's: measured in bench/linkbench).
    pub congestion: Congestion,
}

/// Which congestion controller QUIC uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// Loss-based (quinn's default, like Linux TCP).
    Cubic,
    /// Model-based (bandwidth and RTT estimates); quinn marks it experimental.
    Bbr,
}

impl std::str::FromStr for Congestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Congestion::Cubic),
            "bbr" => Ok(Congestion::Bbr),
            other => Err(format!(
                "unknown congestion controller {other:?} (cubic or bbr)"
            )),
        }
    }
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            rtt: Duration::from_millis(100),
            bandwidth_bytes_per_sec: 125_000_000,
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            segmentation_offload: false,
            max_concurrent_streams: 256,
            congestion: Congestion::Bbr,
        }
    }
}

impl TransportSettings {
    /// Per-stream receive window: bandwidth x RTT, at least 1.25 MB.
    pub fn stream_window(&self) -> u64 {
        let bdp = u128::from(self.bandwidth_bytes_per_sec).saturating_mul(self.rtt.as_nanos())
            / 1_000_000_000;
        u64::try_from(bdp)
            .unwrap_or(u64::MAX)
            .clamp(MIN_STREAM_WINDOW, VarInt::MAX.into_inner())
    }

    /// Connection receive window and send buffer: twice the stream window.
    pub fn connection_window(&self) -> u64 {
        self.stream_window()
            .saturating_mul(2)
            .min(VarInt::MAX.into_inner())
    }
}

/// Transport parameters for both ends.
pub fn transport_config(t: &TransportSettings) -> quinn::TransportConfig {
    let var_int = |value: u64| VarInt::from_u64(value).unwrap_or(VarInt::MAX);
    let mut config = quinn::TransportConfig::default();
    match t.congestion {
        Congestion::Cubic => config
            .congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default())),
        Congestion::Bbr => {
            config.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
    };
    config
        .stream_receive_window(var_int(t.stream_window()))
        .receive_window(var_int(t.connection_window()))
        .send_window(t.connection_window())
        .initial_rtt(t.rtt)
        .max_concurrent_bidi_streams(VarInt::from_u32(t.max_concurrent_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        .enable_segmentation_offload(t.segmentation_offload)
        .keep_alive_interval((!t.keep_alive.is_zero()).then_some(t.keep_alive))
        .max_idle_timeout(if t.idle_timeout.is_zero() {
            None
        } else {
            // Beyond quinn's maximum (2^62 ms) means "never" anyway.
            IdleTimeout::try_from(t.idle_timeout).ok()
        });
    config
}

/// The accepting side: TLS 1.3, our chain, peers must present a certificate chained to our CA,
/// ALPN [`ALPN`].
pub fn server_config(
    id: &Identity,
    t: &TransportSettings,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(id.roots.clone(), provider.clone()).build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            what: "TLS versions",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|source| TlsError::Rustls {
            what: "our certificate and key",
            source,
        })?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport_config(t)));
    Ok(config)
}

/// The dialing side: TLS 1.3, trusts only our CA for the server, presents our chain, ALPN
/// [`ALPN`]. The server name given to `connect` must be a SAN of the server's certificate.
pub fn client_config(
    id: &Identity,
    t: &TransportSettings,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            what: "TLS versions",
            source,
        })?
        .with_root_certificates(id.roots.clone())
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|source| TlsError::Rustls {
            what: "our certificate and key",
            source,
        })?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport_config(t)));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_bandwidth_delay_product() {
        let t = TransportSettings::default();
        assert_eq!(t.stream_window(), 12_500_000);
        assert_eq!(t.connection_window(), 25_000_000);
        let slow = TransportSettings {
            rtt: Duration::from_millis(1),
            ..TransportSettings::default()
        };
        assert_eq!(slow.stream_window(), MIN_STREAM_WINDOW);
        let absurd = TransportSettings {
            rtt: Duration::from_secs(u64::MAX),
            bandwidth_bytes_per_sec: u64::MAX,
            ..TransportSettings::default()
        };
        assert_eq!(absurd.stream_window(), VarInt::MAX.into_inner());
        let _ = transport_config(&absurd);
    }

    #[test]
    fn pem_errors_name_the_input() {
        let error = Identity::from_pem(b"not pem", b"", b"").unwrap_err();
        assert!(error.to_string().contains("CA PEM"), "{error}");
        let error = Identity::from_pem_files(
            Path::new("/nonexistent/ca.pem"),
            Path::new("c"),
            Path::new("k"),
        )
        .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }
}
