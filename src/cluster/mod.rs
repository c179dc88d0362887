//! Cluster membership: every shoal node runs one Raft group member (openraft 0.9) that
//! agrees on who belongs to the cluster and who is up. This is the only module that
//! names openraft types.
//!
//! - [`types`]: Raft type configuration, node metadata, commands, [`MembershipView`].
//! - [`codec`]: the versioned bincode format of everything persisted or sent.
//! - [`log_store`] / [`state_machine`]: sled-backed Raft storage.

pub mod codec;
pub mod log_store;
pub mod state_machine;
pub mod types;

pub use types::{ClusterCommand, ClusterResponse, MembershipView, NodeId, NodeInfo};
