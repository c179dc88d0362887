//! A whole cluster over mutual TLS (`--cluster.tls.*`, with the cluster secret): it
//! forms, scrapes and answers cluster-wide queries over HTTPS; the internal routes want
//! a certificate of the cluster CA; a node whose certificate comes from another CA
//! cannot join while a legitimate node started at the same moment does. Certificates
//! are made with the `openssl` CLI.

use std::path::Path;
use std::time::Duration;

use crate::cluster::write_secret;
use crate::harness::*;
use crate::pki::Pki;
use crate::web_security::{Curl, curl, hash};

const T: Duration = Duration::from_secs(90);

/// A node certificate for every node on 127.0.0.1 (server and client use).
fn node_cert(pki: &Pki, ca: &str, name: &str) {
    pki.issue(
        ca,
        name,
        name,
        "IP:127.0.0.1,DNS:localhost",
        "serverAuth,clientAuth",
    );
}

struct TlsCluster {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    seeds: String,
    nodes: Vec<Node>,
}

impl TlsCluster {
    /// A cluster of three (not yet started) on the first ports of `range` (reserved
    /// below the ephemeral range: the nodes' own outgoing connections cannot take one
    /// before a node binds it), scraping `target` every second.
    fn new(dir: tempfile::TempDir, target: &str, range: &PortRange) -> (TlsCluster, Vec<u16>) {
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let ports: Vec<u16> = (0..3).map(|i| range.base + i).collect();
        let seeds = ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let c = TlsCluster {
            dir,
            config,
            seeds,
            nodes: Vec::new(),
        };
        (c, ports)
    }

    fn flags(&self, pki: &Pki, ca: &str, cert: &str, secret: &Path) -> Vec<String> {
        [
            "--cluster.seeds",
            &self.seeds,
            "--cluster.tls.cert-file",
            &pki.path(&format!("{cert}.crt")),
            "--cluster.tls.key-file",
            &pki.path(&format!("{cert}.key")),
            "--cluster.tls.ca-file",
            &pki.path(&format!("{ca}.crt")),
            "--cluster.secret-file",
            secret.to_str().unwrap(),
            "--cluster.down-after",
            "3s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn spawn(&self, name: &str, port: u16, flags: &[String]) -> Node {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Node::spawn_on(
            self.dir.path(),
            &self.config,
            &self.dir.path().join(name),
            "127.0.0.1",
            port,
            &flags,
        )
    }
}

/// GET `path` on `node` over HTTPS, trusting `ca` (and presenting `cert` when given).
fn get(node: &Node, pki: &Pki, ca: &str, cert: Option<&str>, extra: &[&str], path: &str) -> Curl {
    let url = format!("https://{}{path}", node.addr());
    let ca_file = pki.path(&format!("{ca}.crt"));
    let mut args = vec!["--cacert".to_string(), ca_file];
    if let Some(c) = cert {
        args.extend([
            "--cert".to_string(),
            pki.path(&format!("{c}.crt")),
            "--key".to_string(),
            pki.path(&format!("{c}.key")),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&args)
}

fn cluster_json(node: &Node, pki: &Pki) -> Result<serde_json::Value, String> {
    let r = get(node, pki, "ca", None, &[], "/api/v1/cluster");
    if r.status != 200 {
        return Err(format!("{r:?}"));
    }
    let v: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
    Ok(v["data"].clone())
}

fn wait_members(node: &Node, pki: &Pki, n: usize) -> serde_json::Value {
    wait_for(&format!("{n} members up with a leader"), T, || {
        let d = cluster_json(node, pki)?;
        let members = d["members"].as_array().cloned().unwrap_or_default();
        let up = members.iter().filter(|m| m["state"] == "up").count();
        if d["leaderId"].is_string() && members.len() == n && up == n {
            Ok(d)
        } else {
            Err(format!("{d}"))
        }
    })
}

#[test]
fn a_cluster_over_mutual_tls_forms_serves_and_keeps_out_a_foreign_ca() {
    let dir = tempdir();
    let pki_dir = dir.path().join("pki");
    std::fs::create_dir_all(&pki_dir).unwrap();
    let pki = Pki::empty(&pki_dir);
    pki.ca("ca");
    pki.ca("other-ca");
    node_cert(&pki, "ca", "node");
    node_cert(&pki, "ca", "late");
    node_cert(&pki, "other-ca", "intruder");
    let secret = write_secret(dir.path());

    let target = TargetServer::start();
    target.set("/metrics", Reply::text("tls_probe 1\n"));
    let range = free_port_range(5);
    let (mut c, ports) = TlsCluster::new(dir, &target.target(), &range);
    let flags = c.flags(&pki, "ca", "node", &secret);
    for (i, p) in ports.iter().enumerate() {
        let n = c.spawn(&format!("node{i}"), *p, &flags);
        c.nodes.push(n);
    }
    let formed = wait_members(&c.nodes[0], &pki, 3);

    // Cluster-wide data over TLS: every node answers for the target, whoever scrapes it.
    for n in &c.nodes {
        wait_for("the target's sample through every node", T, || {
            let r = get(n, &pki, "ca", None, &[], "/api/v1/query?query=tls_probe");
            if r.status == 200 && r.body.contains("\"tls_probe\"") {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        });
    }

    // The listener speaks TLS only; the secret never crosses in clear text.
    let plain = curl(&[&format!("http://{}/-/ready", c.nodes[0].addr())]);
    assert_ne!(
        plain.status, 200,
        "plain HTTP must not be served: {plain:?}"
    );

    // Internal routes: the secret alone is not enough; a certificate of the cluster CA
    // with the secret is; a certificate of another CA fails the handshake.
    let bearer = format!("Authorization: Bearer {}", crate::cluster::SECRET);
    let no_cert = get(
        &c.nodes[0],
        &pki,
        "ca",
        None,
        &["-H", &bearer],
        "/internal/cluster/info",
    );
    assert_eq!(no_cert.status, 401, "{no_cert:?}");
    assert!(no_cert.body.contains("client certificate"), "{no_cert:?}");
    let ok = get(
        &c.nodes[0],
        &pki,
        "ca",
        Some("node"),
        &["-H", &bearer],
        "/internal/cluster/info",
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    let foreign = get(
        &c.nodes[0],
        &pki,
        "ca",
        Some("intruder"),
        &["-H", &bearer],
        "/internal/cluster/info",
    );
    assert_eq!(
        foreign.status, 0,
        "a foreign certificate must fail the handshake: {foreign:?}"
    );
    let no_secret = get(
        &c.nodes[0],
        &pki,
        "ca",
        Some("node"),
        &[],
        "/internal/cluster/info",
    );
    assert_eq!(no_secret.status, 401, "{no_secret:?}");

    // A node of another CA (with the right secret) and a legitimate late node start at
    // the same moment: the late one joins, the intruder never does.
    let intruder_port = range.base + 3;
    let intruder_flags = c.flags(&pki, "other-ca", "intruder", &secret);
    let intruder = c.spawn("intruder", intruder_port, &intruder_flags);
    let late_port = range.base + 4;
    let late_flags = c.flags(&pki, "ca", "late", &secret);
    let late = c.spawn("late", late_port, &late_flags);
    c.nodes.push(late);
    let after = wait_members(&c.nodes[0], &pki, 4);
    let addrs: Vec<&str> = after["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["address"].as_str().unwrap())
        .collect();
    assert!(
        addrs.contains(&format!("127.0.0.1:{late_port}").as_str()),
        "{after}"
    );
    assert!(
        !addrs.contains(&format!("127.0.0.1:{intruder_port}").as_str()),
        "the intruder joined: {after}"
    );
    assert_eq!(after["clusterId"], formed["clusterId"]);
    drop(intruder);
}

/// A web config with its own certificate (another CA) and users, and cluster TLS, on
/// the same listener: users are shown the web certificate and need a user; peers offer
/// shoal's ALPN protocol, are shown their cluster certificate and form the cluster.
#[test]
fn web_tls_and_cluster_tls_share_the_listener() {
    let dir = tempdir();
    let pki_dir = dir.path().join("pki");
    std::fs::create_dir_all(&pki_dir).unwrap();
    let pki = Pki::empty(&pki_dir);
    pki.ca("ca");
    pki.ca("webca");
    node_cert(&pki, "ca", "node");
    pki.issue(
        "webca",
        "web",
        "localhost",
        "IP:127.0.0.1,DNS:localhost",
        "serverAuth",
    );
    let secret = write_secret(dir.path());
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  alice: '{}'\n",
            pki.path("web.crt"),
            pki.path("web.key"),
            hash("pw")
        ),
    )
    .unwrap();
    let target = TargetServer::start();
    target.set("/metrics", Reply::text("both_probe 1\n"));
    let range = free_port_range(3);
    let (mut c, ports) = TlsCluster::new(dir, &target.target(), &range);
    let mut flags = c.flags(&pki, "ca", "node", &secret);
    flags.extend(["--web.config.file".to_owned(), web.display().to_string()]);
    for (i, p) in ports.iter().enumerate() {
        let n = c.spawn(&format!("node{i}"), *p, &flags);
        c.nodes.push(n);
    }
    let user = ["-u", "alice:pw"];
    wait_for(
        "3 members up with a leader, over the web certificate",
        T,
        || {
            let r = get(&c.nodes[0], &pki, "webca", None, &user, "/api/v1/cluster");
            let v: serde_json::Value =
                serde_json::from_str(&r.body).map_err(|e| format!("{e}: {r:?}"))?;
            let d = &v["data"];
            let up = d["members"]
                .as_array()
                .map_or(0, |m| m.iter().filter(|m| m["state"] == "up").count());
            if r.status == 200 && d["leaderId"].is_string() && up == 3 {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        },
    );
    for n in &c.nodes {
        wait_for("the target's sample through every node", T, || {
            let r = get(
                n,
                &pki,
                "webca",
                None,
                &user,
                "/api/v1/query?query=both_probe",
            );
            if r.status == 200 && r.body.contains("\"both_probe\"") {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        });
    }
    // Users see the web certificate (not the cluster's) and need a user.
    let r = get(&c.nodes[1], &pki, "ca", None, &user, "/-/ready");
    assert_eq!(
        r.status, 0,
        "the cluster CA must not verify the users' certificate: {r:?}"
    );
    let r = get(&c.nodes[1], &pki, "webca", None, &[], "/-/ready");
    assert_eq!(r.status, 401, "{r:?}");
    // Peers' routes: a web user is no peer; a cluster certificate with the secret is.
    let r = get(
        &c.nodes[1],
        &pki,
        "webca",
        None,
        &user,
        "/internal/cluster/info",
    );
    assert_eq!(r.status, 401, "{r:?}");
    let bearer = format!("Authorization: Bearer {}", crate::cluster::SECRET);
    let r = get(
        &c.nodes[1],
        &pki,
        "webca",
        Some("node"),
        &["-H", &bearer],
        "/internal/cluster/info",
    );
    assert_eq!(r.status, 200, "{r:?}");
}
