//! `shoal cluster status|leave|remove`: talks to a node's public HTTP API
//! (`GET /api/v1/cluster`, `POST /api/v1/cluster/leave`,
//! `POST /api/v1/cluster/remove/{id}`) and prints the answer. The admin routes get the
//! cluster secret as `Authorization: Bearer` when `--cluster.secret-file` is given.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::cli::{ClusterCommand, ClusterTarget};

/// Runs one `shoal cluster` subcommand.
pub fn run(cmd: ClusterCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    rt.block_on(async move {
        match cmd {
            ClusterCommand::Status(t) => {
                let data = call(&t, reqwest::Method::GET, "/api/v1/cluster").await?;
                print!("{}", render_table(&data));
                Ok(ExitCode::SUCCESS)
            }
            ClusterCommand::Leave(t) => {
                let data = call(&t, reqwest::Method::POST, "/api/v1/cluster/leave").await?;
                println!(
                    "node {} left the cluster and is shutting down",
                    data["nodeId"].as_str().unwrap_or("?")
                );
                Ok(ExitCode::SUCCESS)
            }
            ClusterCommand::Remove { node_id, target } => {
                let id: u64 = node_id
                    .trim()
                    .parse()
                    .with_context(|| format!("invalid node id {node_id:?}"))?;
                call(
                    &target,
                    reqwest::Method::POST,
                    &format!("/api/v1/cluster/remove/{id}"),
                )
                .await?;
                println!("node {id} removed from the cluster");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn base_url(node: &str) -> String {
    let node = node.trim().trim_end_matches('/');
    if node.starts_with("http://") || node.starts_with("https://") {
        node.to_owned()
    } else {
        format!("http://{node}")
    }
}

/// Calls `path` on the target node; returns the `data` of a success envelope.
async fn call(t: &ClusterTarget, method: reqwest::Method, path: &str) -> anyhow::Result<Value> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")?;
    let url = format!("{}{path}", base_url(&t.node));
    let mut req = client.request(method, &url);
    if let Some(p) = &t.secret_file {
        let secret = crate::cli::read_secret_file(p).map_err(anyhow::Error::msg)?;
        req = req.header("authorization", format!("Bearer {secret}"));
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
    let v: Value = serde_json::from_str(&body)
        .with_context(|| format!("{url} answered {status} with non-JSON: {body}"))?;
    if v["status"] != "success" {
        bail!(
            "{url} answered {status}: {}",
            v["error"].as_str().unwrap_or(&body)
        );
    }
    Ok(v["data"].clone())
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Renders `GET /api/v1/cluster` data as a header and an aligned member table.
pub fn render_table(data: &Value) -> String {
    let mut out = format!(
        "node {} ({})  leader {}  term {}  commit {}  view {}\n",
        s(&data["nodeId"]),
        s(&data["raftState"]),
        s(&data["leaderId"]),
        s(&data["term"]),
        s(&data["commitIndex"]),
        s(&data["viewIndex"]),
    );
    let mut rows = vec![[
        "ID".to_owned(),
        "ADDRESS".to_owned(),
        "ROLE".to_owned(),
        "STATE".to_owned(),
        "LAST CONTACT".to_owned(),
        String::new(),
    ]];
    for m in data["members"].as_array().into_iter().flatten() {
        let mut flags = Vec::new();
        if m["leader"] == true {
            flags.push("leader");
        }
        if m["id"] == data["nodeId"] {
            flags.push("self");
        }
        rows.push([
            s(&m["id"]),
            s(&m["address"]),
            s(&m["role"]),
            s(&m["state"]),
            s(&m["lastContact"]),
            flags.join(","),
        ]);
    }
    let mut widths = [0usize; 6];
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
mod tests {
    use super::*;

    #[test]
    fn table_lists_members() {
        let data = serde_json::json!({
            "nodeId": "11", "raftState": "leader", "leaderId": "11", "term": 2,
            "commitIndex": 7, "viewIndex": 5,
            "members": [
                {"id": "11", "address": "a:1", "role": "voter", "state": "up",
                 "lastContact": "2026-01-01T00:00:00.000Z", "leader": true},
                {"id": "22", "address": "bb:2", "role": "learner", "state": "down",
                 "lastContact": null, "leader": false}
            ]
        });
        let t = render_table(&data);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[0].contains("leader 11") && lines[0].contains("view 5"),
            "{t}"
        );
        assert!(lines[2].starts_with("11  a:1      voter    up"), "{t}");
        assert!(lines[2].ends_with("leader,self"), "{t}");
        assert!(lines[3].contains("learner  down"), "{t}");
        assert_eq!(base_url("h:1/"), "http://h:1");
        assert_eq!(base_url("https://h:1"), "https://h:1");
    }
}
