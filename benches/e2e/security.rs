//! The `security` scenario.

use super::*;

/// `security`: the same PublishStream and fan-out runs on a plain gateway and on one serving
/// TLS with client certificates as identities and grants checked on every publish and open.
/// The rows compare the secured figure (gateway column) with the plain one (raw column).
pub(super) async fn run(o: &Options) -> Result<Vec<Row>> {
    let certs = tempfile::tempdir()?;
    let (extra, tls) = secured_config(certs.path())?;
    let plain = measure(o, Env::start().await?, "plain").await?;
    let secured = measure(o, Env::start_tls(&extra, Some(tls)).await?, "TLS + auth").await?;
    println!(
        "TLS + client-certificate auth + grants: publish {:.2}x, fan-out {:.2}x of plain",
        secured.0 / plain.0,
        secured.1 / plain.1
    );
    Ok(vec![
        Row::new("TLS+auth publish (raw: plain)", Figure::Rate(secured.0))
            .raw(Figure::Rate(plain.0)),
        Row::new(
            "TLS+auth fanout N=256 (raw: plain)",
            Figure::Rate(secured.1),
        )
        .raw(Figure::Rate(plain.1)),
    ])
}

/// Publish rate and fan-out rate (256 watchers) of `env`'s gateway.
async fn measure(o: &Options, env: Env, label: &str) -> Result<(f64, f64)> {
    let n = o.scaled(50_000, 1_000);
    let data = payload(EVENT_BYTES);
    let channel = env.gateway.channel().await?;
    let event = {
        let data = data.clone();
        move |i| BenchEvent::new("sec-pub", i, 1_000, &data)
    };
    let started = Instant::now();
    within("the publish run", publish_grpc(&channel, n, event)).await?;
    let publish = rate(n, started.elapsed());
    ensure_stored(&env.js, GATEWAY_STREAM, n).await?;

    let (watchers, m) = (o.scaled(256, 1), o.scaled(4_000, 100));
    let (fanout, _) = gateway_fan_out(&env, watchers, m, "sec-fan", &data).await?;
    println!(
        "{label:<11} PublishStream {} ev/s, fan-out to {watchers}: {} ev/s",
        thousands(publish),
        thousands(fanout)
    );
    Ok((publish, fanout))
}

/// The gateway configuration of a secured run (TLS, client certificates as identities, one
/// grant), written under `dir`, and the TLS a client of it uses.
fn secured_config(dir: &Path) -> Result<(String, tonic::transport::ClientTlsConfig)> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "bench-ca");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate()?)?;
    let issue = |names: Vec<String>, cn: &str, usage| -> Result<(String, String)> {
        let mut p = CertificateParams::new(names)?;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        Ok((p.signed_by(&key, &ca)?.pem(), key.serialize_pem()))
    };
    let server = issue(
        vec!["localhost".into(), "127.0.0.1".into()],
        "jetwatch",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let client = issue(vec![], "bench", ExtendedKeyUsagePurpose::ClientAuth)?;
    let files = [
        ("tls.crt", &server.0),
        ("tls.key", &server.1),
        ("ca.crt", &ca.pem()),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text)?;
    }
    let config = format!(
        "\n[tls]\ncert_file = \"{0}/tls.crt\"\nkey_file = \"{0}/tls.key\"\n\
         client_ca_file = \"{0}/ca.crt\"\n\n[auth]\nclient_certificates = true\n\n\
         [[auth.grants]]\nidentities = [\"bench\"]\nactions = [\"publish\", \"subscribe\"]\n\
         stream = \"*\"\nsubjects = [\"events.>\"]\n",
        dir.display()
    );
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.pem()))
        .identity(tonic::transport::Identity::from_pem(client.0, client.1))
        .domain_name("localhost");
    Ok((config, tls))
}
