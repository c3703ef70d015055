//! Every size limit of the PS protocol, in one place.
//!
//! Tensors travel in chunks of at most [`CHUNK_BYTES`] of data; small chunks
//! share a message up to [`MESSAGE_DATA_BYTES`] of data, so that an encoded
//! message stays well under [`MAX_MESSAGE_BYTES`], the gRPC limit both the
//! server and the client set for decoding and encoding. Tensor and request
//! sizes are bounded by [`Limits`], checked before anything is allocated.

/// Most data bytes in one chunk: 1 MiB.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Data bytes at which a message is closed and the next begins (a chunk's
/// header counts [`CHUNK_OVERHEAD`] plus its name and shape).
pub const MESSAGE_DATA_BYTES: usize = 1 << 20;

/// The first message of a stream closes at this many data bytes, and each
/// next one at twice the last, up to [`MESSAGE_DATA_BYTES`]: a message is
/// decoded only when whole, so the first tensors of a pull (the first
/// layers, which the step waits for) arrive without waiting for a full
/// megabyte behind them.
pub const FIRST_MESSAGE_DATA_BYTES: usize = 32 << 10;

/// Estimated encoded size of a chunk's fixed fields, for packing.
pub const CHUNK_OVERHEAD: usize = 64;

/// Largest encoded gRPC message either side accepts or sends: 4 MiB.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Longest variable name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// Highest tensor rank.
pub const MAX_RANK: usize = 32;

/// Longest a Pull may wait for its version.
pub const MAX_PULL_WAIT_MS: u64 = 10 * 60 * 1000;

/// HTTP/2 flow-control windows (per stream and per connection). The h2
/// default of 64 KiB caps a loopback stream far below the link's speed.
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// Largest HTTP/2 frame either side accepts (h2's default is 16 KiB: a
/// 1 MiB message would be 64 frames).
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Size limits a server enforces; violations are RESOURCE_EXHAUSTED errors
/// naming the tensor and the setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single tensor (a variable's value, a gradient).
    pub max_tensor_bytes: u64,
    /// Most tensor bytes in one Init or Push stream.
    pub max_request_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_tensor_bytes: 1 << 30,
            max_request_bytes: 4 << 30,
        }
    }
}
