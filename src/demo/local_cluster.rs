//! The local cluster of `shoal demo`: `shoal run` child processes on consecutive
//! loopback ports, seeded with each other, each with its own data dir and log file.
//! Stopping it sends SIGINT (a node keeps its id, as on Ctrl-C) and waits; dropping it
//! kills whatever is still running, so no node outlives the demo.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::web::cluster::ClusterDoc;

/// One `shoal run` child.
struct NodeProcess {
    child: Child,
    addr: SocketAddr,
}

/// N `shoal run` processes forming one cluster.
pub struct LocalCluster {
    nodes: Vec<NodeProcess>,
}

/// The demo cluster's secret file (written by `shoal demo` when missing).
pub fn secret_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster-secret")
}

/// The arguments of `shoal run` for node `index` (1-based) of a demo cluster: data dir
/// `data_dir/node-<index>`, seeds = the first node's address, the demo's secret.
pub fn run_args(
    config: &Path,
    data_dir: &Path,
    index: usize,
    addr: SocketAddr,
    seed: SocketAddr,
) -> Vec<String> {
    vec![
        "run".into(),
        "--config".into(),
        config.display().to_string(),
        "--data-dir".into(),
        data_dir.join(format!("node-{index}")).display().to_string(),
        "--listen".into(),
        addr.to_string(),
        "--cluster.seeds".into(),
        seed.to_string(),
        "--cluster.secret-file".into(),
        secret_path(data_dir).display().to_string(),
    ]
}

/// Where node `index`'s log goes.
pub fn log_path(data_dir: &Path, index: usize) -> PathBuf {
    data_dir.join(format!("node-{index}.log"))
}

/// `addr`, `addr+1`, ... (`n` addresses on consecutive ports).
pub fn consecutive(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    (0..n)
        .map(|i| {
            let port = u16::try_from(i)
                .ok()
                .and_then(|i| addr.port().checked_add(i))
                .ok_or_else(|| anyhow::anyhow!("port range from {addr} overflows"))?;
            Ok(SocketAddr::new(addr.ip(), port))
        })
        .collect()
}

impl LocalCluster {
    /// Spawns one `exe run` per address; all seed from the first address.
    pub fn start(
        exe: &Path,
        config: &Path,
        data_dir: &Path,
        addrs: &[SocketAddr],
    ) -> anyhow::Result<LocalCluster> {
        use anyhow::Context as _;
        let mut cluster = LocalCluster { nodes: Vec::new() };
        let seed = *addrs.first().context("a cluster needs at least one node")?;
        for (i, addr) in addrs.iter().enumerate() {
            let index = i + 1;
            let log = log_path(data_dir, index);
            let logf = std::fs::File::create(&log)
                .with_context(|| format!("creating {}", log.display()))?;
            let child = Command::new(exe)
                .args(run_args(config, data_dir, index, *addr, seed))
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(logf)
                .spawn()
                .with_context(|| format!("starting node {index} ({})", exe.display()))?;
            cluster.nodes.push(NodeProcess { child, addr: *addr });
        }
        Ok(cluster)
    }

    /// The HTTP addresses of the nodes.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Nodes that have exited, with their exit status.
    pub fn exited(&mut self) -> Vec<(usize, std::process::ExitStatus)> {
        self.nodes
            .iter_mut()
            .enumerate()
            .filter_map(|(i, n)| n.child.try_wait().ok().flatten().map(|st| (i + 1, st)))
            .collect()
    }

    /// SIGINT to every node, then waits up to `timeout` for all to exit; kills the rest.
    pub fn stop(&mut self, timeout: Duration) {
        for n in &self.nodes {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(n.child.id().to_string())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + timeout;
        for n in &mut self.nodes {
            loop {
                match n.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = n.child.kill();
                        let _ = n.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Ok(None) = n.child.try_wait() {
                let _ = n.child.kill();
                let _ = n.child.wait();
            }
        }
    }
}

/// Whether `/api/v1/cluster` data shows `nodes` members, all up, owning `targets`
/// targets between them (replication factor 1) in an assignment over the current view
/// (one over an older view can still show a newcomer with none).
pub fn formed(data: &ClusterDoc, nodes: usize, targets: usize) -> bool {
    let owned: usize = data.members.iter().filter_map(|m| m.targets).sum();
    data.leader_id.is_some()
        && data.assignment_view_index == Some(data.view_index)
        && data.members.len() == nodes
        && data.members.iter().all(|m| m.state == "up")
        && owned == targets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ports() {
        let a: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let v = consecutive(a, 3).unwrap();
        assert_eq!(
            v.iter().map(|a| a.port()).collect::<Vec<_>>(),
            [9090, 9091, 9092]
        );
        assert!(consecutive("127.0.0.1:65535".parse().unwrap(), 2).is_err());
    }

    fn doc(leader: Option<&str>, asg: u64, members: &[(&str, usize)]) -> ClusterDoc {
        let member = |(state, targets): &(&str, usize)| crate::web::cluster::MemberDoc {
            id: "1".into(),
            address: "a:1".into(),
            role: "voter".into(),
            state: (*state).into(),
            last_contact: None,
            leader: false,
            targets: Some(*targets),
            drain: None,
        };
        ClusterDoc {
            node_id: "1".into(),
            cluster_id: None,
            address: "a:1".into(),
            leader_id: leader.map(str::to_owned),
            leader_address: None,
            raft_state: "leader".into(),
            term: 1,
            leader_changes: 1,
            last_log_index: None,
            commit_index: None,
            applied_index: None,
            view_index: 7,
            pending_rule_batches: 0,
            assignment_view_index: Some(asg),
            discovered_targets: None,
            replication_factor: None,
            members: members.iter().map(member).collect(),
        }
    }

    #[test]
    fn formed_needs_all_members_up_and_all_targets_owned() {
        let ok = doc(Some("1"), 7, &[("up", 4), ("up", 6)]);
        assert!(formed(&ok, 2, 10));
        assert!(!formed(&doc(Some("1"), 5, &[("up", 4), ("up", 6)]), 2, 10));
        assert!(!formed(&ok, 3, 10));
        assert!(!formed(&ok, 2, 11));
        assert!(!formed(
            &doc(Some("1"), 7, &[("up", 4), ("down", 6)]),
            2,
            10
        ));
        assert!(!formed(&doc(None, 7, &[("up", 10)]), 1, 10));
    }
}
