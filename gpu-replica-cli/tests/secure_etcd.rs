//! `serve` on a secured etcd, each started here (Debian's etcd 3.4): TLS with client
//! certificates, and a password. With the right credentials the server works; with the wrong
//! ones, or none, or an etcd that is not there, it exits within 25 s naming the cause.
#![cfg(feature = "etcd")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{data_dir, free_port, http, BIN};
use gpu_replica_core::testkit::{self, EtcdProcess};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

/// Writes a CA and a server and a client certificate it signs into `dir`: ca.pem,
/// server.pem/key, client.pem/key.
fn certificates(dir: &Path) -> PathBuf {
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "etcd test CA");
    let ca = params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (stem, names, usage) in [
        (
            "server",
            vec!["localhost".to_string(), "127.0.0.1".to_string()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        ("client", vec![], ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    }
    dir.to_path_buf()
}

/// Runs `serve` on `etcd` with `extra` flags and environment: Ok(its port) once it listens,
/// or Err(what it said and how long it took to exit). The server is killed at the end.
fn serve(
    dir: &Path,
    etcd: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<u16, (String, Duration)> {
    let port = free_port();
    let range = testkit::port_range();
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .envs(env.iter().copied())
        .args([
            "serve",
            "--gpus",
            "fake:1",
            "--gpu-attach",
            "env",
            "--label",
            "io.gpu-replica.test=1",
        ])
        .arg("--label")
        .arg(format!("io.gpu-replica.instance={}", dir.display()))
        .args([
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--store",
            &format!("etcd://{etcd}"),
        ])
        .args([
            "--port-range",
            &format!("{}-{}", range.start, range.end),
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            let Output { stderr, .. } = child.wait_with_output().unwrap();
            return Err((
                String::from_utf8_lossy(&stderr).into_owned(),
                started.elapsed(),
            ));
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let (status, _) = http(
                &format!("127.0.0.1:{port}"),
                "POST",
                "/api/v1/volumes",
                Some(serde_json::json!({"name": testkit::unique_name("sec"), "size": "1GB"})),
            );
            let _ = child.kill();
            let _ = child.wait();
            assert_eq!(status, 200, "a write through the secured store");
            return Ok(port);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "serve neither listened nor exited"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn fails_within_25_s(result: Result<u16, (String, Duration)>, says: &[&str]) {
    let (said, took) = result.expect_err("serve started without the right credentials");
    assert!(took < Duration::from_secs(25), "took {took:?}: {said}");
    for word in says {
        assert!(said.contains(word), "'{word}' not in: {said}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_an_etcd_with_tls_and_client_certificates() {
    testkit::docker().await;
    let dir = data_dir();
    let certs = certificates(&dir);
    let p = |f: &str| certs.join(f).display().to_string();
    let etcd = EtcdProcess::start_tls(
        &certs.join("server.pem"),
        &certs.join("server.key"),
        Some(&certs.join("ca.pem")),
    );
    let at = etcd.host_port();
    let (ca, cert, key) = (p("ca.pem"), p("client.pem"), p("client.key"));
    serve(
        &dir,
        &at,
        &[
            "--etcd-cacert",
            &ca,
            "--etcd-cert",
            &cert,
            "--etcd-key",
            &key,
        ],
        &[],
    )
    .unwrap_or_else(|(said, _)| panic!("{said}"));
    // Plain HTTP to a TLS-only etcd, TLS without the client certificate: a clear exit.
    fails_within_25_s(
        serve(&dir, &at, &[], &[]),
        &["etcd at http://", "--etcd-cacert"],
    );
    fails_within_25_s(
        serve(&dir, &at, &["--etcd-cacert", &ca], &[]),
        &["etcd at https://"],
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_an_etcd_with_a_password() {
    testkit::docker().await;
    let dir = data_dir();
    let etcd = EtcdProcess::start();
    etcd.enable_auth("pa55word").await;
    let at = etcd.host_port();
    std::fs::write(dir.join("etcd-password"), "pa55word\n").unwrap();
    let file = dir.join("etcd-password").display().to_string();
    serve(
        &dir,
        &at,
        &["--etcd-user", "root", "--etcd-password-file", &file],
        &[],
    )
    .unwrap_or_else(|(said, _)| panic!("{said}"));
    serve(
        &dir,
        &at,
        &["--etcd-user", "root"],
        &[("GPU_REPLICA_ETCD_PASSWORD", "pa55word")],
    )
    .unwrap_or_else(|(said, _)| panic!("{said}"));
    let wrong = serve(
        &dir,
        &at,
        &["--etcd-user", "root"],
        &[("GPU_REPLICA_ETCD_PASSWORD", "guess")],
    );
    let (said, _) = wrong.as_ref().map(|_| ()).unwrap_err().clone();
    assert!(
        !said.contains("guess"),
        "the password is in the error: {said}"
    );
    fails_within_25_s(wrong, &["etcd at", "password"]);
    fails_within_25_s(serve(&dir, &at, &[], &[]), &["etcd at", "--etcd-user"]);
    fails_within_25_s(
        serve(&dir, &at, &["--etcd-user", "root"], &[]),
        &["GPU_REPLICA_ETCD_PASSWORD"],
    );
    drop(etcd);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_in_time_when_etcd_is_not_there() {
    testkit::docker().await;
    let dir = data_dir();
    let nowhere = format!("127.0.0.1:{}", free_port());
    fails_within_25_s(serve(&dir, &nowhere, &[], &[]), &["etcd at http://"]);
    std::fs::remove_dir_all(dir).ok();
}
