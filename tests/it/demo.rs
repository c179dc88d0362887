//! `shoal demo`: one command gives a working local cluster, and the command it prints for
//! adding a node really adds one that takes over a share of the targets.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{GroupChild, free_port_range, http_get, shoal_bin, tempdir, wait_for};

/// `/api/v1/cluster` of `addr` as (members, targets per member), when it answers.
fn cluster(addr: &str) -> Result<(usize, Vec<u64>), String> {
    let (code, body) = http_get(&format!("http://{addr}/api/v1/cluster"))?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{code}: {e}"))?;
    let members = v["data"]["members"].as_array().ok_or(body.clone())?;
    let up = members.iter().filter(|m| m["state"] == "up").count();
    let targets = members
        .iter()
        .map(|m| m["targets"].as_u64().unwrap_or(0))
        .collect();
    Ok((up, targets))
}

#[test]
fn demo_forms_a_cluster_and_its_add_node_command_rebalances() {
    let dir = tempdir();
    // Nodes on base..base+4 (the 4th is the one the banner tells how to add), fleet after.
    let ports = free_port_range(44);
    let base = ports.base;
    let fleet = base + 4;
    let out_path = dir.path().join("demo.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut demo = GroupChild::spawn(
        Command::new(shoal_bin())
            .args(["demo", "--targets", "40", "--series-per-target", "20"])
            .arg("--listen")
            .arg(format!("127.0.0.1:{base}"))
            .arg("--fleet-port")
            .arg(fleet.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("demo"))
            .env("NO_COLOR", "1")
            .stdout(out)
            .stderr(Stdio::null()),
    );
    let first = format!("127.0.0.1:{base}");

    // The banner comes once 3 nodes are up and own all 40 targets between them. (40, so
    // that rendezvous leaves no node of 3 or 4 without a target: P < 1e-4.)
    let add_cmd = wait_for("the demo banner", Duration::from_secs(120), || {
        if let Ok(Some(st)) = demo.try_wait() {
            panic!(
                "demo exited with {st}: {}",
                std::fs::read_to_string(&out_path).unwrap()
            );
        }
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        text.lines()
            .find_map(|l| l.trim().strip_prefix("shoal run ").map(str::to_owned))
            .ok_or(text)
    });
    let (up, targets) = cluster(&first).unwrap();
    assert_eq!(up, 3, "three nodes up when the banner shows");
    assert_eq!(
        targets.iter().sum::<u64>(),
        40,
        "every target owned once: {targets:?}"
    );
    assert!(
        targets.iter().all(|&t| t > 0),
        "every node owns targets: {targets:?}"
    );

    // Run the printed command: a 4th node joins and takes some targets.
    let mut fourth = GroupChild::spawn(
        Command::new(shoal_bin())
            .arg("run")
            .args(add_cmd.split_whitespace())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let after = wait_for(
        "4 nodes sharing the targets",
        Duration::from_secs(90),
        || match cluster(&first)? {
            (4, t) if t.iter().sum::<u64>() == 40 && t.iter().all(|&n| n > 0) => Ok(t),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(after.len(), 4);
    let _ = fourth.kill();
    let _ = fourth.wait();

    // The demo's rules: shard series on the nodes, job series committed by the leader.
    for q in ["shard:http_requests:rate1m", "job:http_requests:rate1m"] {
        let url = format!("http://{first}/api/v1/query?query={q}");
        wait_for(
            &format!("{q} in the demo"),
            Duration::from_secs(120),
            || {
                let (_, body) = http_get(&url)?;
                let v: serde_json::Value =
                    serde_json::from_str(&body).map_err(|e| e.to_string())?;
                match v["data"]["result"].as_array() {
                    Some(r) if !r.is_empty() => Ok(()),
                    _ => Err(body),
                }
            },
        );
    }

    // Ctrl-C stops the demo and every node it started.
    Command::new("kill")
        .arg("-INT")
        .arg(demo.id().to_string())
        .status()
        .unwrap();
    let st = wait_for("the demo to exit", Duration::from_secs(60), || {
        demo.try_wait()
            .map_err(|e| e.to_string())?
            .ok_or("running".to_owned())
    });
    assert!(st.success(), "demo exit status {st}");
    for port in base..base + 3 {
        assert!(
            http_get(&format!("http://127.0.0.1:{port}/-/healthy")).is_err(),
            "node on port {port} still answers after the demo stopped"
        );
    }
}
