//! The gRPC codec of the tensor-carrying services: prost's, with buffers
//! sized for the ~1 MiB messages tensors travel in.
//!
//! tonic's default codec starts an encode buffer at 8 KiB and grows it 8 KiB
//! at a time, so a 1 MiB message is copied again on every reallocation;
//! here one message fits the first allocation, and each encoded message is
//! handed to HTTP/2 as soon as it is complete.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial (and growth) size of the encode and decode buffers: a 1 MiB
/// chunk plus its message's headers.
pub const BUFFER_BYTES: usize = (1 << 20) + (64 << 10);

/// Encoded bytes after which what was encoded goes to HTTP/2: one byte, so
/// every message leaves as soon as it is encoded. With a larger threshold
/// tonic keeps encoding the messages of a ready stream until it has that
/// many bytes: a pull's first 32 KiB message (the first layer's weights)
/// would wait for the megabytes behind it to be encoded too.
pub const YIELD_BYTES: usize = 1;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_BYTES)
}

/// [`tonic_prost::ProstCodec`] with [`BUFFER_BYTES`] buffers.
#[derive(Debug, Clone, Copy)]
pub struct TensorCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for TensorCodec<T, U> {
    fn default() -> Self {
        TensorCodec(PhantomData)
    }
}

impl<T, U> Codec for TensorCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
