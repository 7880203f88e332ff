//! `strait certs generate`: a small private PKI for link agents' mutual TLS.
//!
//! Writes a CA (`ca.pem`, `ca.key`) and, per agent name, `<name>.pem` + `<name>.key`: an
//! ECDSA P-256 certificate signed by the CA, usable both as a TLS server certificate (the side
//! that listens) and as a client certificate (the side that dials), since either side of a link
//! may dial. Subject alternative names: the agent name, `localhost`, `127.0.0.1` and any
//! `--san` extras. Keys are PKCS#8 PEM files readable by the owner only (0600).
//!
//! Both agents of a link get the same `ca.pem` as their trust root. The CA key is only needed
//! to issue more certificates later; keep it off the agents' machines.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// How long the CA is valid, in years.
const CA_VALIDITY_YEARS: i32 = 10;
/// How long agent certificates are valid, in years.
const AGENT_VALIDITY_YEARS: i32 = 2;

/// Options of `strait certs generate`.
#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Directory to write the files into (created if missing).
    #[arg(long, default_value = "./strait-certs")]
    pub out: PathBuf,
    /// Agent names; one certificate each, e.g. east,west
    #[arg(long, value_delimiter = ',', default_value = "east,west")]
    pub names: Vec<String>,
    /// Extra subject alternative names for every agent cert (DNS names or IPs)
    #[arg(long, value_delimiter = ',')]
    pub san: Vec<String>,
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
}

/// Runs `strait certs generate` and prints what it wrote.
pub fn generate(args: &CertsArgs) -> anyhow::Result<()> {
    if args.force {
        write_pki(&args.out, &args.names, &args.san, true)?;
    } else {
        generate_into(&args.out, &args.names, &args.san)?;
    }
    let mut files = vec!["ca.pem".to_string(), "ca.key".to_string()];
    for name in args
        .names
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
    {
        files.push(format!("{name}.pem"));
        files.push(format!("{name}.key"));
    }
    for file in files {
        println!("wrote {}", args.out.join(file).display());
    }
    println!(
        "Give each agent ca.pem plus its own <name>.pem and <name>.key; keep ca.key elsewhere."
    );
    Ok(())
}

/// Writes a new CA and one certificate per name into `dir` (created if missing). Refuses to
/// overwrite any existing file (checked before anything is written).
pub fn generate_into(dir: &Path, names: &[String], extra_sans: &[String]) -> anyhow::Result<()> {
    write_pki(dir, names, extra_sans, false)
}

/// One file to write.
struct Output {
    path: PathBuf,
    contents: String,
    mode: u32,
}

/// Generates everything in memory, then writes it.
fn write_pki(
    dir: &Path,
    names: &[String],
    extra_sans: &[String],
    overwrite: bool,
) -> anyhow::Result<()> {
    let names: Vec<&str> = names
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        bail!("no agent names given (--names east,west)");
    }
    let mut seen = HashSet::new();
    for name in &names {
        check_agent_name(name)?;
        if !seen.insert(*name) {
            bail!("agent name {name:?} given twice");
        }
    }
    let extra_sans: Vec<String> = extra_sans
        .iter()
        .map(|san| san.trim().to_string())
        .filter(|san| !san.is_empty())
        .collect();

    let outputs = build_pki(dir, &names, &extra_sans)?;
    if !overwrite {
        let existing: Vec<String> = outputs
            .iter()
            .filter(|output| output.path.exists())
            .map(|output| output.path.display().to_string())
            .collect();
        if !existing.is_empty() {
            bail!(
                "refusing to overwrite {} (use --force to replace)",
                existing.join(", ")
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for output in &outputs {
        write_file(output, overwrite)?;
    }
    Ok(())
}

/// Agent names become file names and DNS SANs: letters, digits, `-`, `_`, `.`; no leading dot.
fn check_agent_name(name: &str) -> anyhow::Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.len() > 63 || name.starts_with('.') || !name.chars().all(allowed) {
        bail!(
            "agent name {name:?} must be 1-63 letters, digits, '-', '_' or '.' (not starting \
             with '.')"
        );
    }
    if name == "ca" {
        bail!("agent name \"ca\" would collide with the CA's files");
    }
    Ok(())
}

/// Creates the CA and the agent certificates (nothing touches the disk).
fn build_pki(dir: &Path, names: &[&str], extra_sans: &[String]) -> anyhow::Result<Vec<Output>> {
    let (year, month, day) = yesterday_utc();
    // Start a day early so a peer whose clock lags a little still accepts the certificates.
    let not_before = rcgen::date_time_ymd(year, month, day);
    // Day 28 exists in every month (avoids 29 February in a non-leap year).
    let expiry = |years: i32| rcgen::date_time_ymd(year + years, month, day.min(28));

    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Strait link CA");
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "Strait");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = expiry(CA_VALIDITY_YEARS);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("cannot self-sign the CA certificate")?;
    let mut outputs = vec![
        Output {
            path: dir.join("ca.pem"),
            contents: ca_cert.pem(),
            mode: 0o644,
        },
        Output {
            path: dir.join("ca.key"),
            contents: ca_key.serialize_pem(),
            mode: 0o600,
        },
    ];
    let issuer = Issuer::new(ca_params, ca_key);

    for name in names {
        let mut sans = vec![
            name.to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ];
        for extra in extra_sans {
            if !sans.contains(extra) {
                sans.push(extra.clone());
            }
        }
        let mut params = CertificateParams::new(sans)
            .with_context(|| format!("invalid subject alternative name for {name:?}"))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, *name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Strait");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = expiry(AGENT_VALIDITY_YEARS);
        let key = KeyPair::generate().with_context(|| format!("cannot generate {name}'s key"))?;
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("cannot sign {name}'s certificate"))?;
        outputs.push(Output {
            path: dir.join(format!("{name}.pem")),
            contents: cert.pem(),
            mode: 0o644,
        });
        outputs.push(Output {
            path: dir.join(format!("{name}.key")),
            contents: key.serialize_pem(),
            mode: 0o600,
        });
    }
    Ok(outputs)
}

/// Writes one file with its mode (applied at creation, and again when replacing a file).
fn write_file(output: &Output, overwrite: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = &output.path;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(output.mode);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // A replaced file keeps its old mode unless set explicitly.
    file.set_permissions(std::fs::Permissions::from_mode(output.mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    file.write_all(output.contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Yesterday's date (UTC) as (year, month 1-12, day 1-31), from the system clock.
fn yesterday_utc() -> (i32, u8, u8) {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(seconds / 86_400).unwrap_or(0) - 1;
    civil_from_days(days)
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day), following the
/// well-known era-based algorithm (eras of 400 years = 146 097 days).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let shifted = days + 719_468; // days since 0000-03-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (
        i32::try_from(year).unwrap_or(i32::MAX),
        u8::try_from(month).unwrap_or(1),
        u8::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A unique, fresh directory under the system temp dir (removed by the test).
    fn temp_dir(tag: &str) -> PathBuf {
        let unique = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "strait-certs-{tag}-{}-{unique}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Decodes the single PEM block of `text` with the expected label (standard base64).
    fn pem_decode(text: &str, label: &str) -> Vec<u8> {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let body = text
            .split_once(&begin)
            .and_then(|(_, rest)| rest.split_once(&end))
            .map(|(body, _)| body)
            .unwrap_or_else(|| panic!("no {label} block in {text}"));
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut bit_count = 0;
        let mut out = Vec::new();
        for c in body
            .bytes()
            .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        {
            let value = alphabet.iter().position(|&a| a == c).expect("base64") as u32;
            bits = (bits << 6) | value;
            bit_count += 6;
            if bit_count >= 8 {
                bit_count -= 8;
                out.push((bits >> bit_count) as u8);
                bits &= (1 << bit_count) - 1;
            }
        }
        out
    }

    /// One DER element: (tag, content).
    fn der_element(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = input[0];
        let (length, header) = match input[1] {
            short if short < 0x80 => (short as usize, 2),
            long => {
                let count = (long & 0x7f) as usize;
                let length = input[2..2 + count]
                    .iter()
                    .fold(0usize, |acc, &b| (acc << 8) | b as usize);
                (length, 2 + count)
            }
        };
        (
            tag,
            &input[header..header + length],
            &input[header + length..],
        )
    }

    fn der_children(mut content: &[u8]) -> Vec<(u8, &[u8])> {
        let mut children = Vec::new();
        while !content.is_empty() {
            let (tag, inner, rest) = der_element(content);
            children.push((tag, inner));
            content = rest;
        }
        children
    }

    /// The fields of a certificate's TBSCertificate the tests look at.
    struct Tbs<'a> {
        issuer: &'a [u8],
        subject: &'a [u8],
        extensions: &'a [u8],
    }

    fn tbs(cert_der: &[u8]) -> Tbs<'_> {
        let (tag, certificate, _) = der_element(cert_der);
        assert_eq!(tag, 0x30);
        let parts = der_children(certificate);
        assert_eq!(parts.len(), 3, "tbs, algorithm, signature");
        let fields = der_children(parts[0].1);
        // [0] version, serial, signature alg, issuer, validity, subject, spki, [3] extensions
        assert_eq!(fields[0].0, 0xa0, "v3 certificate");
        Tbs {
            issuer: fields[3].1,
            subject: fields[5].1,
            extensions: fields.iter().find(|(tag, _)| *tag == 0xa3).unwrap().1,
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn generates_a_chained_pki_with_private_keys() {
        let dir = temp_dir("gen");
        let names = vec!["east".to_string(), "west".to_string()];
        let extras = vec!["10.1.2.3".to_string(), "link.example.com".to_string()];
        generate_into(&dir, &names, &extras).unwrap();

        for (file, mode) in [
            ("ca.pem", 0o644),
            ("ca.key", 0o600),
            ("east.pem", 0o644),
            ("east.key", 0o600),
            ("west.pem", 0o644),
            ("west.key", 0o600),
        ] {
            let metadata = std::fs::metadata(dir.join(file)).unwrap();
            assert_eq!(metadata.permissions().mode() & 0o777, mode, "{file}");
        }

        let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
        let ca_der = pem_decode(&ca_pem, "CERTIFICATE");
        let ca = tbs(&ca_der);
        assert_eq!(ca.issuer, ca.subject, "CA is self-signed");
        assert!(contains(ca.subject, b"Strait link CA"));

        for name in ["east", "west"] {
            let key_pem = std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap();
            assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
            let key = KeyPair::from_pem(&key_pem).unwrap();
            assert!(key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256));

            let cert_pem = std::fs::read_to_string(dir.join(format!("{name}.pem"))).unwrap();
            let cert_der = pem_decode(&cert_pem, "CERTIFICATE");
            // The certificate carries this key's public key...
            assert!(contains(&cert_der, key.public_key_raw()));
            let leaf = tbs(&cert_der);
            // ... and is issued by the CA.
            assert_eq!(leaf.issuer, ca.subject);
            assert!(contains(leaf.subject, name.as_bytes()));
            // SANs: dNSName [2] and iPAddress [7] entries.
            let dns = |n: &str| [&[0x82, n.len() as u8][..], n.as_bytes()].concat();
            for san in [name, "localhost", "link.example.com"] {
                assert!(contains(leaf.extensions, &dns(san)), "SAN {san}");
            }
            assert!(
                contains(leaf.extensions, &[0x87, 4, 127, 0, 0, 1]),
                "IP SAN 127.0.0.1"
            );
            assert!(
                contains(leaf.extensions, &[0x87, 4, 10, 1, 2, 3]),
                "IP SAN 10.1.2.3"
            );
            // extendedKeyUsage: id-kp-serverAuth (1.3.6.1.5.5.7.3.1) and clientAuth (.3.2).
            let kp = |last: u8| [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, last];
            assert!(contains(leaf.extensions, &kp(1)), "serverAuth");
            assert!(contains(leaf.extensions, &kp(2)), "clientAuth");
        }
        // Different agents, different keys.
        assert_ne!(
            std::fs::read(dir.join("east.key")).unwrap(),
            std::fs::read(dir.join("west.key")).unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_to_overwrite_unless_forced() {
        let dir = temp_dir("force");
        let names = vec!["east".to_string()];
        generate_into(&dir, &names, &[]).unwrap();
        let before = std::fs::read(dir.join("east.pem")).unwrap();
        let error = generate_into(&dir, &names, &[]).unwrap_err().to_string();
        assert!(error.contains("refusing to overwrite"), "{error}");
        assert_eq!(
            std::fs::read(dir.join("east.pem")).unwrap(),
            before,
            "untouched"
        );

        // A file left with a loose mode is tightened when replaced.
        std::fs::set_permissions(dir.join("east.key"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let args = CertsArgs {
            out: dir.clone(),
            names: names.clone(),
            san: Vec::new(),
            force: true,
        };
        generate(&args).unwrap();
        assert_ne!(
            std::fs::read(dir.join("east.pem")).unwrap(),
            before,
            "replaced"
        );
        let mode = std::fs::metadata(dir.join("east.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_bad_names() {
        let dir = temp_dir("names");
        for names in [
            vec![],
            vec!["../evil"],
            vec!["ca"],
            vec!["a", "a"],
            vec![".hidden"],
        ] {
            let names: Vec<String> = names.into_iter().map(String::from).collect();
            assert!(generate_into(&dir, &names, &[]).is_err(), "{names:?}");
        }
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "nothing written"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn calendar_conversion() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }
}
