//! `shoal cluster status|leave|remove`, `shoal tsdb import` and `shoal healthcheck`:
//! clients of a node's public HTTP API (`GET /api/v1/cluster`, `POST
//! /api/v1/cluster/leave`, `POST /api/v1/cluster/remove/{id}`, `POST
//! /api/v1/admin/tsdb/import`, `/-/healthy`). The admin routes get the cluster secret as
//! `Authorization: Bearer` when `--cluster.secret-file` is given. Answers are read into
//! the API's own types (`web::cluster::ClusterDoc`, `web::admin::ImportDoc` and
//! friends), never by string keys.

use std::process::ExitCode;

use anyhow::Context as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::backfill::file::{Batches, FileSummary, Scanner};
use crate::cli::{ClusterCommand, ClusterTarget, ImportFormat};
use crate::web::admin::{ImportBody, ImportDoc, ImportSeriesDoc};
use crate::web::cluster::{ClusterDoc, LeaveDoc, RemoveDoc};

/// `shoal tsdb import openmetrics FILE`: checks the whole file, then sends it to the
/// node in batches; prints what the owners did. Exit 1 on a bad file (nothing sent) or
/// a failed batch (the batches before it are stored: running the command again is
/// safe, what is held already counts as duplicate).
pub fn tsdb_import(format: ImportFormat) -> anyhow::Result<ExitCode> {
    let ImportFormat::Openmetrics {
        file,
        target,
        batch_size,
    } = format;
    let summary = match crate::backfill::file::check(&file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "shoal: error: {e}
Nothing was imported."
            );
            return Ok(ExitCode::from(1));
        }
    };
    println!("checked {}: {}", file.display(), describe(&summary));
    if summary.samples == 0 {
        println!("nothing to import");
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    rt.block_on(async move {
        let client = client_for(&target, IMPORT_TIMEOUT)?;
        let batches = Batches::new(
            Scanner::open(&file)?,
            usize::try_from(batch_size).unwrap_or(usize::MAX),
        );
        let mut total = ImportDoc::default();
        for (sent, batch) in batches.enumerate() {
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    // The file changed since it was checked.
                    print_total(&file, &total);
                    eprintln!("shoal: error: {e}");
                    return Ok(ExitCode::from(1));
                }
            };
            let body = ImportBody {
                series: batch
                    .iter()
                    .map(|s| ImportSeriesDoc::new(&s.labels, &s.samples))
                    .collect(),
            };
            let body = serde_json::to_vec(&body).context("encoding a batch")?;
            let doc: ImportDoc = match client
                .call(
                    reqwest::Method::POST,
                    "/api/v1/admin/tsdb/import",
                    Some(body),
                )
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    if sent > 0 {
                        print_total(&file, &total);
                        eprintln!(
                            "shoal: error after {sent} batches: {e:#}
The batches before were stored; running the command again is safe (what is held counts as duplicate)."
                        );
                    } else {
                        eprintln!("shoal: error: {e:#}");
                    }
                    return Ok(ExitCode::from(1));
                }
            };
            total.series += doc.series;
            total.samples += doc.samples;
            total.stored += doc.stored;
            total.duplicate += doc.duplicate;
            total.conflicting += doc.conflicting;
            total.dropped += doc.dropped;
            for (node, n) in doc.nodes {
                *total.nodes.entry(node).or_default() += n;
            }
        }
        // A series split over batches counts once per batch: take the file's count.
        total.series = summary.series;
        print_total(&file, &total);
        Ok(ExitCode::SUCCESS)
    })
}

fn describe(s: &FileSummary) -> String {
    let when = |t: Option<i64>| {
        t.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "{} series, {} samples from {} to {}",
        s.series,
        s.samples,
        when(s.min_t),
        when(s.max_t)
    )
}

fn print_total(file: &std::path::Path, t: &ImportDoc) {
    println!(
        "imported {}: {} samples; stored {}, duplicate {}, conflicting {}, dropped {} (older than retention or too far in the future)",
        file.display(),
        t.samples,
        t.stored,
        t.duplicate,
        t.conflicting,
        t.dropped
    );
    if !t.nodes.is_empty() {
        let per: Vec<String> = t
            .nodes
            .iter()
            .map(|(id, n)| format!("node {id}: {n}"))
            .collect();
        println!("series sent per owner: {}", per.join(", "));
    }
}

/// Runs one `shoal cluster` subcommand.
pub fn cluster_command(cmd: ClusterCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    rt.block_on(async move {
        match cmd {
            ClusterCommand::Status { target, json } => {
                let data: ClusterDoc =
                    call_node(&target, reqwest::Method::GET, "/api/v1/cluster").await?;
                if json {
                    println!("{}", serde_json::to_string(&data)?);
                } else {
                    print!("{}", render_table(&data));
                }
                Ok(ExitCode::SUCCESS)
            }
            ClusterCommand::Leave(t) => {
                let data: LeaveDoc =
                    call_node(&t, reqwest::Method::POST, "/api/v1/cluster/leave").await?;
                if data.left {
                    println!(
                        "node {} left the cluster and is shutting down",
                        data.node_id
                    );
                } else {
                    println!(
                        "node {} is leaving: its targets moved to the other members; it moves its samples to them, then leaves and shuts down (progress: shoal cluster status)",
                        data.node_id
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            ClusterCommand::NewSecret { file } => {
                if new_secret(&file)? {
                    println!("wrote a new cluster secret to {}", file.display());
                } else {
                    println!("{} exists: kept", file.display());
                }
                Ok(ExitCode::SUCCESS)
            }
            ClusterCommand::Remove {
                node_id,
                target,
                yes,
            } => {
                let id: u64 = node_id
                    .trim()
                    .parse()
                    .with_context(|| format!("invalid node id {node_id:?}"))?;
                let status: ClusterDoc =
                    call_node(&target, reqwest::Method::GET, "/api/v1/cluster").await?;
                if let Some(warning) = removal_warning(&status, &id.to_string())
                    && !yes
                {
                    eprintln!("{warning}\nNothing was changed. Run again with --yes to remove it.");
                    return Ok(ExitCode::from(2));
                }
                let data: RemoveDoc = call_node(
                    &target,
                    reqwest::Method::POST,
                    &format!("/api/v1/cluster/remove/{id}"),
                )
                .await?;
                println!("node {} removed from the cluster", data.node_id);
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// What removing member `id` costs, when it costs anything: with replication factor 1
/// every sample only that member holds (the history of the targets it scraped and did
/// not hand over by a graceful leave) leaves the cluster's answers with it; a member
/// that is up should leave gracefully instead (`shoal cluster leave`), which moves its
/// samples first.
pub fn removal_warning(status: &ClusterDoc, id: &str) -> Option<String> {
    let member = status.members.iter().find(|m| m.id == id)?;
    let rf = status.replication_factor.unwrap_or(1);
    let mut lines = Vec::new();
    if member.state != "down" {
        lines.push(format!(
            "node {id} ({}) is {}: `shoal cluster leave --node {}` moves its samples to the other members before it leaves; removing it does not.",
            member.address, member.state, member.address
        ));
    }
    if rf < 2 {
        lines.push(format!(
            "With replication factor {rf}, removing node {id} loses every sample only it holds: the history of the targets it scraped ({} now) since they moved to it. Its targets move to the other members and are scraped from then on. The samples come back only if the node is started again on its data dir (it then joins as a new member and serves them).",
            member
                .targets
                .map_or_else(|| "unknown".to_owned(), |t| t.to_string())
        ));
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// `shoal healthcheck URL`: GET the URL; success (exit 0) on a 2xx answer, else a
/// line on stderr and exit 1. Used as the container HEALTHCHECK (no curl in the image).
pub fn healthcheck(url: &str, timeout: std::time::Duration) -> ExitCode {
    crate::tls::install_crypto_provider();
    let probe = async {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .tls_backend_preconfigured(crate::tls::client_config(None, None)?)
            .build()
            .context("building the HTTP client")?;
        let resp = client
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url} failed"))?;
        let status = resp.status();
        anyhow::ensure!(status.is_success(), "GET {url} answered {status}");
        anyhow::Ok(())
    };
    let res = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")
        .and_then(|rt| rt.block_on(probe));
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal: unhealthy: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn base_url(node: &str) -> String {
    let node = node.trim().trim_end_matches('/');
    if node.starts_with("http://") || node.starts_with("https://") {
        node.to_owned()
    } else {
        format!("http://{node}")
    }
}

/// Writes a new random secret to `file` unless it exists (`true`: written). The file
/// is created readable by its owner only, and appears whole or not at all.
pub fn new_secret(file: &std::path::Path) -> anyhow::Result<bool> {
    use base64::Engine as _;
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    if file.exists() {
        return Ok(false);
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
    let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{secret}")?;
        f.sync_all()
    };
    write().with_context(|| format!("writing {}", tmp.display()))?;
    // A hard link fails if `file` appeared meanwhile: the first writer's secret wins.
    let linked = std::fs::hard_link(&tmp, file);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(d) = dir {
                let _ = std::fs::File::open(d).and_then(|d| d.sync_all());
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("writing {}", file.display())),
    }
}

/// The JSON envelope of every API answer.
#[derive(Deserialize)]
struct Envelope<T> {
    status: String,
    data: Option<T>,
    error: Option<String>,
}

/// A client of one node's API with the flags of a [`ClusterTarget`] (TLS, secret).
struct NodeClient {
    client: reqwest::Client,
    base: String,
    secret: Option<String>,
}

/// How long a `shoal cluster` request may take.
const CLUSTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long one backfill batch may take (every owner makes its share durable; a peer's
/// share may take `backfill::SHARE_TIMEOUT`).
const IMPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

fn client_for(t: &ClusterTarget, timeout: std::time::Duration) -> anyhow::Result<NodeClient> {
    crate::tls::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(timeout);
    let identity = t.tls_cert_file.as_deref().zip(t.tls_key_file.as_deref());
    builder = builder.tls_backend_preconfigured(
        crate::tls::client_config(t.tls_ca_file.as_deref(), identity)
            .context("the TLS of `shoal cluster` (--cluster.tls.*)")?,
    );
    let client = builder.build().context("building the HTTP client")?;
    let secret = match &t.secret_file {
        Some(p) => Some(
            crate::peer::Secrets::read(p)
                .map_err(anyhow::Error::msg)?
                .sending()
                .to_owned(),
        ),
        None => None,
    };
    Ok(NodeClient {
        client,
        base: base_url(&t.node),
        secret,
    })
}

impl NodeClient {
    /// Calls `path` (with a JSON `body` when given); returns the `data` of a success
    /// envelope.
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let mut req = self.client.request(method, &url);
        if let Some(s) = &self.secret {
            req = req.bearer_auth(s);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("request to {url} failed"))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        let v: Envelope<T> = serde_json::from_str(&body)
            .with_context(|| format!("{url} answered {status} with an unexpected body: {body}"))?;
        match (v.status.as_str(), v.data) {
            ("success", Some(data)) => Ok(data),
            _ => anyhow::bail!("{url} answered {status}: {}", v.error.unwrap_or(body)),
        }
    }
}

/// Calls `path` on the target node; returns the `data` of a success envelope.
async fn call_node<T: DeserializeOwned>(
    t: &ClusterTarget,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<T> {
    client_for(t, CLUSTER_TIMEOUT)?
        .call(method, path, None)
        .await
}

pub fn render_table(data: &ClusterDoc) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let mut out = format!(
        "node {} ({})  leader {}  term {}  commit {}  view {}\n",
        data.node_id,
        data.raft_state,
        opt(data.leader_id.clone()),
        data.term,
        opt(data.commit_index.map(|c| c.to_string())),
        data.view_index,
    );
    let mut rows = vec![[
        "ID".to_owned(),
        "ADDRESS".to_owned(),
        "ROLE".to_owned(),
        "STATE".to_owned(),
        "TARGETS".to_owned(),
        "LAST CONTACT".to_owned(),
        "DRAIN".to_owned(),
        String::new(),
    ]];
    for m in &data.members {
        let mut flags = Vec::new();
        if m.leader {
            flags.push("leader");
        }
        if m.id == data.node_id {
            flags.push("self");
        }
        rows.push([
            m.id.clone(),
            m.address.clone(),
            m.role.clone(),
            m.state.clone(),
            opt(m.targets.map(|t| t.to_string())),
            opt(m.last_contact.clone()),
            opt(m.drain.as_ref().map(|d| {
                if d.done {
                    "done".to_owned()
                } else {
                    format!("{} series, {} bytes left", d.series_left, d.bytes_left)
                }
            })),
            flags.join(","),
        ]);
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod cluster_cli_tests {
    use super::*;

    #[test]
    fn new_secret_is_random_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        assert!(new_secret(&a).unwrap() && new_secret(&b).unwrap());
        let sa = crate::peer::Secrets::read(&a).unwrap();
        let sb = crate::peer::Secrets::read(&b).unwrap();
        assert_ne!(sa.sending(), sb.sending());
        assert!(sa.sending().len() >= 43, "256 bits in base64");
        let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second run keeps the first secret (every node of a volume shares it).
        assert!(!new_secret(&a).unwrap());
        assert_eq!(crate::peer::Secrets::read(&a).unwrap(), sa);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temp file left"
        );
    }

    #[test]
    fn removing_a_member_warns_what_is_lost() {
        let doc = |rf: usize, state: &str| -> ClusterDoc {
            serde_json::from_value(serde_json::json!({
                "nodeId": "11", "clusterId": "3", "address": "a:1", "raftState": "leader",
                "leaderId": "11", "leaderAddress": "a:1", "term": 2, "leaderChanges": 1,
                "lastLogIndex": 7, "commitIndex": 7, "appliedIndex": 7, "viewIndex": 5,
                "pendingRuleBatches": 0, "assignmentViewIndex": 5, "discoveredTargets": 12,
                "replicationFactor": rf,
                "members": [
                    {"id": "11", "address": "a:1", "role": "voter", "state": "up",
                     "lastContact": null, "leader": true, "targets": 7},
                    {"id": "22", "address": "bb:2", "role": "voter", "state": state,
                     "lastContact": null, "leader": false, "targets": 5}
                ]
            }))
            .unwrap()
        };
        let w = removal_warning(&doc(1, "down"), "22").expect("a warning with RF 1");
        assert!(w.contains("loses every sample only it holds"), "{w}");
        assert!(w.contains("(5 now)"), "{w}");
        assert_eq!(removal_warning(&doc(2, "down"), "22"), None);
        let w = removal_warning(&doc(2, "up"), "22").expect("an up member");
        assert!(w.contains("shoal cluster leave --node bb:2"), "{w}");
        // Not a member: nothing to warn about (the node answers that itself).
        assert_eq!(removal_warning(&doc(1, "down"), "99"), None);
    }

    #[test]
    fn table_lists_members() {
        let data: ClusterDoc = serde_json::from_value(serde_json::json!({
            "nodeId": "11", "clusterId": "3", "address": "a:1", "raftState": "leader",
            "leaderId": "11", "leaderAddress": "a:1", "term": 2, "leaderChanges": 1,
            "lastLogIndex": 7, "commitIndex": 7, "appliedIndex": 7, "viewIndex": 5,
            "pendingRuleBatches": 0, "assignmentViewIndex": 5, "discoveredTargets": 12,
            "members": [
                {"id": "11", "address": "a:1", "role": "voter", "state": "up",
                 "lastContact": "2026-01-01T00:00:00.000Z", "leader": true, "targets": 12},
                {"id": "22", "address": "bb:2", "role": "learner", "state": "down",
                 "lastContact": null, "leader": false, "targets": null}
            ]
        }))
        .unwrap();
        let t = render_table(&data);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[0].contains("leader 11") && lines[0].contains("view 5"),
            "{t}"
        );
        assert!(lines[1].contains("STATE  TARGETS"), "{t}");
        assert!(
            lines[2].starts_with("11  a:1      voter    up     12"),
            "{t}"
        );
        assert!(lines[2].ends_with("leader,self"), "{t}");
        assert!(lines[3].contains("learner  down"), "{t}");
        assert_eq!(base_url("h:1/"), "http://h:1");
        assert_eq!(base_url("https://h:1"), "https://h:1");
    }
}

#[cfg(test)]
mod healthcheck_tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// Serves one HTTP request with `status_line` on a loopback port; returns the URL.
    fn one_shot_server(status_line: &'static str) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status_line}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
            }
        });
        format!("http://{addr}/-/healthy")
    }

    #[test]
    fn healthy_answer_exits_zero_anything_else_one() {
        let t = Duration::from_secs(10);
        assert_eq!(
            healthcheck(&one_shot_server("200 OK"), t),
            ExitCode::SUCCESS
        );
        assert_eq!(
            healthcheck(&one_shot_server("503 Service Unavailable"), t),
            ExitCode::from(1)
        );
        // Nothing listening: a closed port.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        assert_eq!(
            healthcheck(&format!("http://{closed}/-/healthy"), t),
            ExitCode::from(1)
        );
        assert_eq!(healthcheck("not a url", t), ExitCode::from(1));
    }
}
