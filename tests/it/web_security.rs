//! `--web.config.file` (Prometheus's web config) with real clients: curl, promtool and
//! a real Prometheus 2.42 federating over HTTPS with basic auth; TLS client
//! certificates; reloads of passwords, certificates and client auth; `shoal check
//! web-config`. Certificates are made at test time with the `openssl` CLI (Debian's
//! `openssl`; tests/run.sh installs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::federate::Prometheus;
use crate::harness::*;
use crate::pki::Pki;

const T: Duration = Duration::from_secs(60);

impl Pki {
    /// A CA, a server and a client certificate it signs, and a second, unrelated CA with
    /// a client certificate (`intruder`).
    fn new(dir: &Path) -> Pki {
        let pki = Pki::empty(dir);
        pki.ca("ca");
        pki.ca("other-ca");
        pki.issue(
            "ca",
            "server",
            "localhost",
            "IP:127.0.0.1,DNS:localhost",
            "serverAuth",
        );
        pki.issue("ca", "client", "client", "DNS:client.example", "clientAuth");
        pki.issue(
            "other-ca",
            "intruder",
            "client",
            "DNS:client.example",
            "clientAuth",
        );
        pki
    }
}

/// A bcrypt hash of `password` (cost 4: debug builds run bcrypt slowly).
pub(crate) fn hash(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

/// What curl got: its exit code, the HTTP status (0 without an answer), the head
/// (lower-cased), the body and curl's stderr.
#[derive(Debug)]
pub(crate) struct Curl {
    pub(crate) exit: i32,
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: String,
    pub(crate) stderr: String,
}

pub(crate) fn curl(args: &[&str]) -> Curl {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "30"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("curl is needed for this test: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Curl {
        exit: out.status.code().unwrap_or(-1),
        status: head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// A shoal node serving HTTPS with the web config `web_yml` (written to `dir/web.yml`).
struct TlsNode {
    node: Node,
    web: PathBuf,
    ca: String,
}

impl TlsNode {
    /// Starts it and waits until `/-/ready` answers 200 to `user`.
    fn start(dir: &Path, config_yaml: &str, web_yml: &str, user: &str, extra: &[&str]) -> TlsNode {
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_yaml).unwrap();
        let web = dir.join("web.yml");
        std::fs::write(&web, web_yml).unwrap();
        let web_s = web.display().to_string();
        let mut args = vec!["--web.config.file", web_s.as_str()];
        args.extend_from_slice(extra);
        let node = Node::spawn_on(
            dir,
            &config,
            &dir.join("data"),
            "127.0.0.1",
            free_port(),
            &args,
        );
        let mut n = TlsNode {
            node,
            web,
            ca: dir.join("ca.crt").display().to_string(),
        };
        let url = n.url("/-/ready");
        let ca = n.ca.clone();
        let log = n.node.log.clone();
        let child = &mut n.node.child;
        wait_for("shoal to serve HTTPS", T, || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "shoal exited early with {st}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let r = curl(&["--cacert", &ca, "-u", user, &url]);
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        });
        n
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.node.port)
    }

    /// GET `path` over HTTPS with `-u user` (None: no credentials) and more curl args.
    fn get(&self, path: &str, user: Option<&str>, extra: &[&str]) -> Curl {
        let url = self.url(path);
        let mut args = vec!["--cacert", self.ca.as_str()];
        if let Some(u) = user {
            args.extend(["-u", u]);
        }
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.node.log).unwrap_or_default()
    }
}

fn scrape_config(target: &str) -> String {
    format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: ['{target}']\n"
    )
}

#[test]
fn https_with_basic_auth_and_headers() {
    let dir = tempdir();
    Pki::new(dir.path());
    let t = TargetServer::start();
    t.set("/metrics", Reply::text("web_sec_metric{path=\"/a\"} 42\n"));
    let alice = hash("wonderland");
    let web = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\nbasic_auth_users:\n  alice: '{alice}'\n"
    );
    let n = TlsNode::start(
        dir.path(),
        &scrape_config(&t.target()),
        &web,
        "alice:wonderland",
        &[],
    );

    // The right user gets the data, over HTTPS, with the configured headers.
    let r = wait_for("web_sec_metric through HTTPS", T, || {
        let r = n.get(
            "/api/v1/query?query=web_sec_metric",
            Some("alice:wonderland"),
            &[],
        );
        if r.status == 200 && r.body.contains("\"42\"") {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    assert!(r.body.contains("\"job\":\"app\""), "{r:?}");
    assert!(r.head.contains("x-frame-options: deny"), "{r:?}");
    assert!(
        r.head
            .contains("strict-transport-security: max-age=31536000"),
        "{r:?}"
    );
    // By name too (the certificate has localhost as a SAN).
    let r = curl(&[
        "--cacert",
        &n.ca,
        "-u",
        "alice:wonderland",
        &format!("https://localhost:{}/-/healthy", n.node.port),
    ]);
    assert_eq!(r.status, 200, "{r:?}");

    // No, wrong or unknown credentials: 401 with the challenge (and the headers).
    for user in [
        None,
        Some("alice:wrong"),
        Some("bob:wonderland"),
        Some("alice:"),
    ] {
        let r = n.get("/api/v1/query?query=up", user, &[]);
        assert_eq!(r.status, 401, "{user:?}: {r:?}");
        assert!(r.head.contains("www-authenticate: basic"), "{r:?}");
        assert!(r.head.contains("x-frame-options: deny"), "{r:?}");
        assert!(!r.body.contains("web_sec_metric"), "{r:?}");
    }
    let r = n.get("/-/healthy", None, &[]);
    assert_eq!(r.status, 401, "every public route needs a user: {r:?}");
    // Node-to-node routes are left to the cluster secret: no 401 there.
    let r = n.get(
        "/internal/query",
        None,
        &["-X", "POST", "--data-binary", "x"],
    );
    assert!(r.status != 401 && r.status != 0, "{r:?}");

    // Plain HTTP to the TLS port gets no HTTP answer; HTTPS without trusting the CA
    // fails the handshake.
    let r = curl(&[&format!("http://127.0.0.1:{}/-/healthy", n.node.port)]);
    assert!(r.status != 200, "plain HTTP answered: {r:?}");
    let plain = http_get(&format!("http://127.0.0.1:{}/-/healthy", n.node.port));
    assert!(
        !matches!(plain, Ok((200, _))),
        "plain HTTP answered: {plain:?}"
    );
    let r = curl(&["-u", "alice:wonderland", &n.url("/-/healthy")]);
    assert!(
        r.exit != 0 && r.status == 0,
        "untrusted certificate accepted: {r:?}"
    );

    // The flag shows the file's path only; no secret reaches the log.
    let r = n.get("/api/v1/status/flags", Some("alice:wonderland"), &[]);
    assert!(
        r.body
            .contains(&format!("\"web.config.file\":\"{}\"", n.web.display())),
        "{r:?}"
    );
    assert!(!r.body.contains(&alice), "{r:?}");
    let log = n.log();
    assert!(
        !log.contains(&alice) && !log.contains("$2b$"),
        "a hash in the log:\n{log}"
    );
    assert!(!log.contains("BEGIN"), "PEM in the log:\n{log}");
}

#[test]
fn client_certificates_are_required_verified_and_reloaded() {
    let dir = tempdir();
    let pki = Pki::new(dir.path());
    let web = |sans: &str| {
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  client_allowed_sans: [{sans}]\n  min_version: TLS13\n"
        )
    };
    std::fs::write(dir.path().join("web.yml"), web("client.example")).unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1s\n").unwrap();
    let web_path = dir.path().join("web.yml").display().to_string();
    let port = free_port();
    let mut node = Node::spawn_on(
        dir.path(),
        &config,
        &dir.path().join("data"),
        "127.0.0.1",
        port,
        &["--web.config.file", &web_path],
    );
    let url = format!("https://127.0.0.1:{port}/-/ready");
    let (ca, cert, key) = (
        pki.path("ca.crt"),
        pki.path("client.crt"),
        pki.path("client.key"),
    );
    let with_cert =
        |cert: &str, key: &str| curl(&["--cacert", &ca, "--cert", cert, "--key", key, &url]);
    let child = &mut node.child;
    wait_for("shoal to serve HTTPS to the client certificate", T, || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("shoal exited early with {st}");
        }
        let r = with_cert(&cert, &key);
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });

    // No certificate, or one from another CA: refused at the handshake.
    let r = curl(&["--cacert", &ca, &url]);
    assert!(
        r.exit != 0 && r.status == 0,
        "no client certificate accepted: {r:?}"
    );
    let r = with_cert(&pki.path("intruder.crt"), &pki.path("intruder.key"));
    assert!(
        r.exit != 0 && r.status == 0,
        "a certificate of another CA accepted: {r:?}"
    );
    // min_version: TLS13 holds.
    let r = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--tls-max",
        "1.2",
        &url,
    ]);
    assert!(r.exit != 0 && r.status == 0, "TLS 1.2 accepted: {r:?}");

    // A reload that allows other SANs only refuses the certificate, on the running
    // listener; allowing its SAN again lets it in.
    std::fs::write(dir.path().join("web.yml"), web("other.example, 10.9.8.7")).unwrap();
    node.signal("HUP");
    wait_for(
        "the client certificate to be refused after the reload",
        T,
        || {
            let r = with_cert(&cert, &key);
            if r.exit != 0 && r.status == 0 {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        },
    );
    std::fs::write(dir.path().join("web.yml"), web("client.example")).unwrap();
    node.signal("HUP");
    wait_for("the client certificate to be accepted again", T, || {
        let r = with_cert(&cert, &key);
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
}

/// promtool with `ca` as its trust store. promtool 2.42 (Debian 12) has no
/// `--http.config.file` for queries: the user goes in the URL (Go's client sends it as
/// basic auth) and the CA through `SSL_CERT_FILE` (Go's system roots on Linux).
fn promtool(ca: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .env("SSL_CERT_FILE", ca)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is needed for this test (Debian package `prometheus`; tests/run.sh installs it): {e}")
        });
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn promtool_and_prometheus_over_https_with_basic_auth() {
    let dir = tempdir();
    let pki = Pki::new(dir.path());
    let t = TargetServer::start();
    t.set("/metrics", Reply::text("web_sec_metric{path=\"/a\"} 42\n"));
    let web = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  alice: '{}'\n",
        hash("wonderland")
    );
    let n = TlsNode::start(
        dir.path(),
        &scrape_config(&t.target()),
        &web,
        "alice:wonderland",
        &[],
    );
    let server = |user: &str| format!("https://{user}@127.0.0.1:{}", n.node.port);
    let ca = pki.path("ca.crt");

    // promtool with basic auth and the CA.
    let out = wait_for("promtool to see web_sec_metric", T, || {
        let (ok, out) = promtool(
            &ca,
            &[
                "query",
                "instant",
                &server("alice:wonderland"),
                "web_sec_metric",
            ],
        );
        if ok && out.contains("=> 42 @[") {
            Ok(out)
        } else {
            Err(out)
        }
    });
    assert!(out.contains("job=\"app\""), "{out}");
    let (ok, out) = promtool(&ca, &["query", "instant", &server("alice:wrong"), "up"]);
    assert!(!ok, "a wrong password queried: {out}");
    assert!(out.contains("401"), "{out}");
    // Without the CA, the handshake fails.
    let (ok, out) = promtool(
        "/dev/null",
        &["query", "instant", &server("alice:wonderland"), "up"],
    );
    assert!(!ok && out.contains("certificate"), "{out}");

    // A real Prometheus federates from shoal over HTTPS with basic auth; with a wrong
    // password its scrape fails (`up` 0).
    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    honor_labels: true\n    metrics_path: /federate\n    params:\n      'match[]': ['{{job=\"app\"}}']\n    scheme: https\n    tls_config:\n      ca_file: {}\n    basic_auth:\n      username: alice\n      password: {password}\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            pki.path("ca.crt"),
            n.node.port
        )
    };
    let prom_dir = dir.path().join("prom");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom = Prometheus::start(
        &prom_dir,
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n{}{}",
            job("shoal", "wonderland"),
            job("shoal-wrong-password", "wrong")
        ),
    );
    let got = wait_for(
        "Prometheus to federate web_sec_metric from shoal",
        T,
        || {
            let r = prom.query("web_sec_metric");
            match r.first() {
                Some(s) if r.len() == 1 && value_of(s) == 42.0 => Ok(s.clone()),
                _ => Err(format!("{r:?}")),
            }
        },
    );
    assert_eq!(got["metric"]["job"], "app", "{got}");
    assert_eq!(got["metric"]["path"], "/a", "{got}");
    wait_for("up of both federation jobs", T, || {
        let up = |job: &str| {
            prom.query(&format!("up{{job=\"{job}\"}}"))
                .first()
                .map(value_of)
        };
        match (up("shoal"), up("shoal-wrong-password")) {
            (Some(1.0), Some(0.0)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

#[test]
fn reload_swaps_passwords_and_certificates_and_keeps_them_on_a_bad_file() {
    let dir = tempdir();
    let pki = Pki::new(dir.path());
    let web = |hash: &str| {
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  alice: '{hash}'\n"
        )
    };
    let n = TlsNode::start(
        dir.path(),
        "global:\n  scrape_interval: 1s\n",
        &web(&hash("old-password")),
        "alice:old-password",
        &["--web.enable-lifecycle"],
    );

    // A new password: once reloaded, it works and the old one is refused.
    std::fs::write(&n.web, web(&hash("new-password"))).unwrap();
    n.node.signal("HUP");
    wait_for("the new password to work", T, || {
        let r = n.get("/-/healthy", Some("alice:new-password"), &[]);
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    let r = n.get("/-/healthy", Some("alice:old-password"), &[]);
    assert_eq!(r.status, 401, "{r:?}");

    // A new certificate in the same files: new connections get it.
    let subject = |r: &Curl| {
        r.stderr
            .lines()
            .find(|l| l.contains("subject:"))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let before = n.get("/-/healthy", Some("alice:new-password"), &["-v"]);
    assert!(subject(&before).contains("CN=localhost"), "{before:?}");
    pki.issue(
        "ca",
        "server",
        "reloaded",
        "IP:127.0.0.1,DNS:localhost",
        "serverAuth",
    );
    n.node.signal("HUP");
    wait_for("the reloaded certificate to be served", T, || {
        let r = n.get("/-/healthy", Some("alice:new-password"), &["-v"]);
        if r.status == 200 && subject(&r).contains("CN=reloaded") {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });

    // A bad file: the reload fails (SIGHUP: logged; POST /-/reload: answered), and the
    // running settings stay.
    let bad = web(&hash("third")).replace(
        "  key_file: server.key\n",
        "  key_file: server.key\n  min_version: TLS10\n",
    );
    std::fs::write(&n.web, bad).unwrap();
    n.node.signal("HUP");
    wait_for("the failed reload to be logged", T, || {
        let log = n.log();
        if log.contains("web configuration reload failed")
            && log.contains("TLS10 is not supported by shoal")
        {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    let r = n.get("/-/reload", Some("alice:new-password"), &["-X", "POST"]);
    assert_eq!(r.status, 500, "{r:?}");
    assert!(r.body.contains("TLS10 is not supported by shoal"), "{r:?}");
    let r = n.get("/-/healthy", Some("alice:new-password"), &["-v"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(subject(&r).contains("CN=reloaded"), "{r:?}");
    assert_eq!(n.get("/-/healthy", Some("alice:third"), &[]).status, 401);

    // What the listener was built with (versions, suites, curves) cannot change.
    std::fs::write(
        &n.web,
        web(&hash("third")).replace(
            "  key_file: server.key\n",
            "  key_file: server.key\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n",
        ),
    )
    .unwrap();
    let r = n.get("/-/reload", Some("alice:new-password"), &["-X", "POST"]);
    assert_eq!(r.status, 500, "{r:?}");
    assert!(
        r.body
            .contains("cipher_suites cannot change without a restart"),
        "{r:?}"
    );

    // TLS cannot be turned off by a reload.
    std::fs::write(
        &n.web,
        format!("basic_auth_users:\n  alice: '{}'\n", hash("third")),
    )
    .unwrap();
    let r = n.get("/-/reload", Some("alice:new-password"), &["-X", "POST"]);
    assert_eq!(r.status, 500, "{r:?}");
    assert!(
        r.body
            .contains("TLS cannot be turned off without a restart"),
        "{r:?}"
    );
    assert_eq!(
        n.get("/-/healthy", Some("alice:new-password"), &[]).status,
        200
    );
    assert!(!n.log().contains("$2b$"), "a hash in the log");
}

#[test]
fn check_web_config_reports_success_and_failure() {
    let dir = tempdir();
    Pki::new(dir.path());
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let good = write(
        "good.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\nbasic_auth_users:\n  alice: '{}'\n",
            hash("x")
        ),
    );
    let old_tls = write(
        "old-tls.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS11\n",
    );
    let missing = write(
        "missing.yml",
        "tls_server_config:\n  cert_file: nowhere.crt\n  key_file: server.key\n",
    );
    let mismatch = write(
        "mismatch.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n",
    );
    let unknown = write("unknown.yml", "basic_auth_user:\n  alice: x\n");
    let check = |files: &[&str]| {
        let out = Command::new(shoal_bin())
            .args(["check", "web-config"])
            .args(files)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = check(&[&good]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.trim(), format!("{good} SUCCESS"));
    // Prometheus's own checker agrees.
    let out = Command::new("promtool")
        .args(["check", "web-config", &good])
        .output()
        .unwrap_or_else(|e| panic!("promtool is needed for this test: {e}"));
    assert!(out.status.success(), "{out:?}");
    for (file, why) in [
        (&old_tls, "TLS11 is not supported by shoal"),
        (&missing, "failed to read cert_file"),
        (&mismatch, "do not make a pair"),
        (&unknown, "basic_auth_user"),
    ] {
        let (code, out) = check(&[&good, file]);
        assert_eq!(code, Some(1), "{file}: {out}");
        assert!(out.contains(&format!("{good} SUCCESS")), "{out}");
        assert!(
            out.contains(&format!("{file} FAILED: ")) && out.contains(why),
            "{file}: {out}"
        );
    }
}

/// The cluster admin routes take a web user or the cluster secret; the secret is no web
/// credential elsewhere, and the internal routes skip basic authentication (peers
/// authenticate with the secret).
#[test]
fn cluster_admin_routes_take_a_web_user_or_the_cluster_secret() {
    let dir = tempdir();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 15s\nscrape_configs: []\n",
    )
    .unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!("basic_auth_users:\n  alice: '{}'\n", hash("pw")),
    )
    .unwrap();
    let secret = crate::cluster::write_secret(dir.path());
    let node = Node::spawn_on(
        dir.path(),
        &config,
        &dir.path().join("data"),
        "127.0.0.1",
        free_port(),
        &[
            "--web.config.file",
            web.to_str().unwrap(),
            "--cluster.secret-file",
            secret.to_str().unwrap(),
        ],
    );
    let url = |p: &str| format!("http://{}{p}", node.addr());
    wait_for("ready", T, || {
        let r = curl(&["-u", "alice:pw", &url("/-/ready")]);
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    let bearer = format!("Authorization: Bearer {}", crate::cluster::SECRET);
    let remove = url("/api/v1/cluster/remove/12345");
    let r = curl(&["-X", "POST", &remove]);
    assert_eq!(r.status, 401, "no credentials: {r:?}");
    let r = curl(&["-X", "POST", "-u", "alice:pw", &remove]);
    assert_eq!(r.status, 200, "web user: {r:?}");
    assert!(r.body.contains("\"removed\":true"), "{r:?}");
    let r = curl(&["-X", "POST", "-H", &bearer, &remove]);
    assert_eq!(r.status, 200, "cluster secret: {r:?}");
    let r = curl(&["-X", "POST", "-H", "Authorization: Bearer wrong", &remove]);
    assert_eq!(r.status, 401, "wrong secret: {r:?}");
    assert!(r.body.contains("missing or wrong cluster secret"), "{r:?}");
    let r = curl(&["-X", "POST", "-u", "alice:nope", &remove]);
    assert_eq!(r.status, 401, "wrong password: {r:?}");
    // The secret opens no other route.
    let r = curl(&["-H", &bearer, &url("/api/v1/query?query=up")]);
    assert_eq!(r.status, 401, "the secret is not a web credential: {r:?}");
    // Internal routes: the secret, not a web user.
    let r = curl(&["-H", &bearer, &url("/internal/cluster/info")]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&["-u", "alice:pw", &url("/internal/cluster/info")]);
    assert_eq!(r.status, 401, "a web user is no peer: {r:?}");
}
