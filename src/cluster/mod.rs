//! Cluster membership: every shoal node runs one Raft group member (openraft 0.9) that
//! agrees on who belongs to the cluster and who is up. This is the only module that
//! names openraft types.
//!
//! - [`handle`]: [`ClusterHandle`] — start, bootstrap/join, leader duties, status,
//!   leave/remove, the [`MembershipView`] watch channel.
//! - [`rpc`]: server side of the internal cluster routes (bytes in, bytes out; mounted
//!   by `crate::web::internal`).
//! - [`network`]: client side of the Raft RPCs (over the node's `crate::peer::PeerClient`).
//! - [`log_store`] / [`state_machine`]: sled-backed Raft storage.
//! - [`types`]: Raft type configuration, node metadata, commands, [`MembershipView`].
//! - [`codec`]: the versioned bincode format of everything persisted or sent.

pub mod codec;
#[doc(hidden)]
pub mod fuzz;
pub mod handle;
pub mod log_store;
pub(crate) mod network;
pub mod rpc;
pub mod state_machine;
pub mod types;

pub use handle::{
    ClusterData, ClusterError, ClusterHandle, ClusterOptions, ClusterStatus, MemberRole,
    MemberState, MemberStatus,
};
pub use types::{
    ClusterCommand, ClusterResponse, DrainProgress, MembershipView, NodeId, NodeInfo, SampleBatch,
    SampleSink, append_batches,
};

#[cfg(test)]
mod tests;
