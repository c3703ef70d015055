//! psflow parameter server: variable shards, optimizer slots, sync/async
//! aggregation and the PS gRPC service.
//!
//! - [`Shard`]: the state machine (variables, TF1 optimizer slots, sync
//!   aggregation with backup workers, async, bounded staleness), testable
//!   without gRPC. Updates are psflow-kernels' `optim` functions, the same
//!   code as single-machine training.
//! - [`PsService`] and [`serve`]: the `psflow.ps.ParameterServer` gRPC
//!   service, with gRPC health; [`raw_pull`] answers Pull without copying
//!   the pulled values into tonic's encoder.
//! - [`PsClient`]: connects, initializes a shard, pulls, pushes, reads
//!   stats; cuts tensors into chunks and reassembles them.
//! - [`limits`]: every size limit of the protocol.
//! - [`shm`]: shared-memory regions, through which a client on the PS's
//!   host moves tensor data instead of the gRPC messages.
//!
//! The protocol, limits and modes are described in `docs/cluster.md`.

pub mod bench;
pub mod client;
pub mod config;
pub mod error;
pub mod fresh;
pub mod limits;
pub mod raw_pull;
pub mod service;
pub mod shard;
pub mod shm;
pub mod wire;

pub use client::{is_loopback, PsClient, Pulled};
pub use config::{Mode, ShardConfig};
pub use error::{Error, Result};
pub use limits::Limits;
pub use psflow_proto::ps::{PushOutcome, TensorRole};
pub use service::{serve, serve_with, PsService};
pub use shard::{Push, PushReply, Shard};
pub use wire::Received;
