//! Tensors on the wire: a tensor's elements as little-endian bytes shared
//! with its buffer ([`tensor_bytes`]), cut into [`TensorChunk`]s packed into
//! messages ([`pack`]), and reassembled with every limit checked before
//! anything is allocated ([`Assembler`]).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_varint, encoded_len_varint};
use prost::Message;
use psflow_graph::dtype::{dtype_from_proto, dtype_to_proto};
use psflow_kernels::{DType, Data, Tensor};
use psflow_proto::ps::{PushHeader, TensorChunk, TensorRole};
use psflow_proto::tensorflow::DataType;
use tonic::Status;

use crate::limits::{
    Limits, CHUNK_BYTES, CHUNK_OVERHEAD, FIRST_MESSAGE_DATA_BYTES, MAX_MESSAGE_BYTES,
    MAX_NAME_BYTES, MAX_RANK, MESSAGE_DATA_BYTES,
};
use crate::shm::Region;
use crate::{Error, Result};

/// The bytes of a slice of plain numbers.
fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: `T` is one of f32, f64, i32, i64, u8, bool (the element types
    // of `Data`): no padding, every byte initialized; the returned slice
    // covers exactly `v`'s memory and borrows it.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Copies `data` to byte offset `at` of `v`'s spare capacity (`v` is
/// empty, with capacity for the whole tensor).
fn write_spare<T: Copy>(v: &mut Vec<T>, at: usize, data: &[u8]) {
    let spare = v.spare_capacity_mut();
    assert!(
        at + data.len() <= std::mem::size_of_val(spare),
        "checked by the caller"
    );
    // SAFETY: the destination range lies inside the vector's allocation
    // (asserted above) and cannot overlap `data`, a different buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(
            data.as_ptr(),
            spare.as_mut_ptr().cast::<u8>().add(at),
            data.len(),
        )
    }
}

/// Marks the first `n` elements of `v` written.
///
/// # Safety
/// All `n * size_of::<T>()` bytes were written by [`write_spare`], and
/// every bit pattern is a valid `T` (f32, f64, i32, i64, u8: not bool).
unsafe fn assume_written<T>(mut v: Vec<T>, n: usize) -> Vec<T> {
    // SAFETY: the caller's contract; `n` is within the capacity.
    unsafe { v.set_len(n) };
    v
}

/// Owns a tensor's buffer and shows it as bytes, so [`Bytes`] can share it.
#[cfg(target_endian = "little")]
struct DataBytes(Data);

#[cfg(target_endian = "little")]
impl AsRef<[u8]> for DataBytes {
    fn as_ref(&self) -> &[u8] {
        match &self.0 {
            Data::F32(v) => as_bytes(v),
            Data::F64(v) => as_bytes(v),
            Data::I32(v) => as_bytes(v),
            Data::I64(v) => as_bytes(v),
            Data::U8(v) => as_bytes(v),
            Data::Bool(v) => as_bytes(v),
        }
    }
}

/// A tensor's elements as little-endian bytes. On little-endian machines
/// the bytes share the tensor's buffer (no copy).
pub fn tensor_bytes(t: &Tensor) -> Bytes {
    #[cfg(target_endian = "little")]
    {
        Bytes::from_owner(DataBytes(t.data().clone()))
    }
    #[cfg(target_endian = "big")]
    {
        Bytes::from(psflow_graph::tensor_proto::tensor_bytes(t))
    }
}

/// How the first messages of a stream are sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Every message holds about [`MESSAGE_DATA_BYTES`]: pushes and Init,
    /// which the receiver applies only once the stream has ended.
    Full,
    /// The first message closes at [`FIRST_MESSAGE_DATA_BYTES`], each next
    /// one at twice the last: pulls, whose first tensors a step waits for.
    Growing,
}

/// Cuts tensors into chunks of at most [`CHUNK_BYTES`] and packs them into
/// messages of about [`MESSAGE_DATA_BYTES`], the first ones smaller when
/// `start` is [`Start::Growing`] (each inner vector is one message). Data
/// are shared with the tensors, not copied.
pub fn pack<'a>(
    tensors: impl IntoIterator<Item = (&'a str, TensorRole, &'a Tensor)>,
    start: Start,
) -> Vec<Vec<TensorChunk>> {
    pack_shm(tensors, start, None)
}

/// Where [`pack_shm`] writes tensor data: a region and the data offset of
/// its first free byte.
pub type ShmCursor<'r> = (&'r Region, &'r mut usize);

/// [`pack`], with the data of each tensor that fits the rest of `shm`'s
/// region copied there (from the cursor on, which it advances) and its
/// chunk naming the place instead of carrying the data. Once one tensor
/// does not fit, it and the rest travel in the messages.
pub fn pack_shm<'a>(
    tensors: impl IntoIterator<Item = (&'a str, TensorRole, &'a Tensor)>,
    start: Start,
    mut shm: Option<ShmCursor<'_>>,
) -> Vec<Vec<TensorChunk>> {
    let mut out = Messages::new(start);
    for (name, role, t) in tensors {
        let bytes = tensor_bytes(t);
        let total = bytes.len();
        // A tensor's chunk at `offset`, without its data; the first one
        // carries the dtype and shape.
        let chunk = |offset: usize| TensorChunk {
            name: name.to_string(),
            dtype: if offset == 0 {
                dtype_to_proto(t.dtype()) as i32
            } else {
                0
            },
            shape: if offset == 0 {
                t.shape().iter().map(|&d| d as u64).collect()
            } else {
                vec![]
            },
            total_bytes: total as u64,
            offset: offset as u64,
            role: role as i32,
            ..TensorChunk::default()
        };
        if let Some((region, cursor)) = shm.as_mut() {
            if total > 0 && region.holds(**cursor as u64, total as u64) {
                region.write(**cursor, &bytes);
                out.push(TensorChunk {
                    shm_region: region.id(),
                    shm_offset: **cursor as u64,
                    ..chunk(0)
                });
                // The next tensor starts on a cache line.
                **cursor = (**cursor + total).next_multiple_of(64);
                continue;
            }
            // This one and the rest go in the messages.
            shm = None;
        }
        let mut offset = 0;
        loop {
            let end = (offset + CHUNK_BYTES).min(total);
            out.push(TensorChunk {
                data: bytes.slice(offset..end),
                ..chunk(offset)
            });
            offset = end;
            if offset >= total {
                break;
            }
        }
    }
    out.finish()
}

/// Chunks gathered into messages, each closed once its data and headers
/// reach the budget (see [`Start`]).
struct Messages {
    messages: Vec<Vec<TensorChunk>>,
    current: Vec<TensorChunk>,
    size: usize,
    budget: usize,
}

impl Messages {
    fn new(start: Start) -> Messages {
        Messages {
            messages: Vec::new(),
            current: Vec::new(),
            size: 0,
            budget: match start {
                Start::Full => MESSAGE_DATA_BYTES,
                Start::Growing => FIRST_MESSAGE_DATA_BYTES,
            },
        }
    }

    /// Adds `chunk`, after closing the current message if it would go over
    /// the budget (the next budget is twice the last, up to the full size).
    fn push(&mut self, chunk: TensorChunk) {
        let cost = CHUNK_OVERHEAD + chunk.name.len() + 10 * chunk.shape.len() + chunk.data.len();
        if !self.current.is_empty() && self.size + cost > self.budget {
            self.messages.push(std::mem::take(&mut self.current));
            self.size = 0;
            self.budget = (self.budget * 2).min(MESSAGE_DATA_BYTES);
        }
        self.current.push(chunk);
        self.size += cost;
    }

    fn finish(mut self) -> Vec<Vec<TensorChunk>> {
        if !self.current.is_empty() {
            self.messages.push(self.current);
        }
        self.messages
    }
}

/// Appends one length-prefixed gRPC message to `pieces` without copying
/// tensor data: a `PullResponse` or `PushRequest`, whose `chunks` are field
/// 2, with `fields` its other fields already encoded. The framing goes in
/// small buffers and each chunk's data is the [`Bytes`] it already is
/// (sharing the tensor's buffer), so HTTP/2 sends it without a copy. It
/// decodes to the same message, of the same length, as prost's encoding (a
/// chunk's data field is written last, after its role).
pub fn encode_framed(fields: &[u8], chunks: Vec<TensorChunk>, pieces: &mut Vec<Bytes>) {
    // Field tags: the message's chunks = 2, TensorChunk.data = 6, both
    // length-delimited.
    const CHUNKS_TAG: u8 = (2 << 3) | 2;
    const DATA_TAG: u8 = (6 << 3) | 2;
    // Each chunk without its data, which is written after the rest.
    let parts: Vec<(TensorChunk, Bytes)> = chunks
        .into_iter()
        .map(|mut c| {
            let data = std::mem::take(&mut c.data);
            (c, data)
        })
        .collect();
    let data_len = |d: &Bytes| {
        if d.is_empty() {
            0
        } else {
            1 + encoded_len_varint(d.len() as u64) + d.len()
        }
    };
    let chunk_len = |(head, data): &(TensorChunk, Bytes)| head.encoded_len() + data_len(data);
    let len = fields.len()
        + parts
            .iter()
            .map(|p| {
                let n = chunk_len(p);
                1 + encoded_len_varint(n as u64) + n
            })
            .sum::<usize>();
    let mut buf =
        BytesMut::with_capacity(5 + len - parts.iter().map(|(_, d)| d.len()).sum::<usize>());
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).expect("a message of chunks is far under 4 GiB"));
    buf.put_slice(fields);
    for p in parts {
        let n = chunk_len(&p);
        let (head, data) = p;
        buf.put_u8(CHUNKS_TAG);
        encode_varint(n as u64, &mut buf);
        head.encode(&mut buf).expect("a BytesMut grows as needed");
        if !data.is_empty() {
            buf.put_u8(DATA_TAG);
            encode_varint(data.len() as u64, &mut buf);
            pieces.push(buf.split().freeze());
            pieces.push(data);
        }
    }
    if !buf.is_empty() {
        pieces.push(buf.freeze());
    }
}

/// Appends one length-prefixed `PushRequest { header, chunks }` to
/// `pieces` (see [`encode_framed`]).
pub fn encode_push_request(
    header: Option<&PushHeader>,
    chunks: Vec<TensorChunk>,
    pieces: &mut Vec<Bytes>,
) {
    // PushRequest.header is field 1, a message.
    let mut fields = Vec::new();
    if let Some(h) = header {
        fields.push((1 << 3) | 2);
        h.encode_length_delimited(&mut fields)
            .expect("a Vec grows as needed");
    }
    encode_framed(&fields, chunks, pieces);
}

/// The one length-prefixed message of a unary gRPC body (a request, or a
/// response without its trailers), uncompressed.
pub fn decode_framed<M: Message + Default>(body: &[u8]) -> Result<M, Status> {
    let bad = |what: &str| Status::invalid_argument(format!("malformed gRPC message: {what}"));
    if body.len() < 5 {
        return Err(bad("shorter than its 5-byte message prefix"));
    }
    if body[0] != 0 {
        return Err(Status::unimplemented(
            "compressed messages are not supported",
        ));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(Status::resource_exhausted(format!(
            "the message is {len} bytes, over the limit of {MAX_MESSAGE_BYTES}"
        )));
    }
    if body.len() != 5 + len {
        return Err(bad("its length prefix does not match the body"));
    }
    M::decode(&body[5..]).map_err(|e| bad(&e.to_string()))
}

/// A tensor received whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub name: String,
    pub role: TensorRole,
    pub value: Tensor,
}

/// A typed buffer being filled from chunks: allocated for the whole
/// tensor but not initialized (no zeroing pass), written chunk by chunk,
/// its length set once every byte arrived.
enum Buf {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    /// u8 and bool (checked to be 0 or 1 when complete).
    U8(Vec<u8>, bool),
}

impl Buf {
    fn with_capacity(dtype: DType, n: usize) -> Buf {
        match dtype {
            DType::F32 => Buf::F32(Vec::with_capacity(n)),
            DType::F64 => Buf::F64(Vec::with_capacity(n)),
            DType::I32 => Buf::I32(Vec::with_capacity(n)),
            DType::I64 => Buf::I64(Vec::with_capacity(n)),
            DType::U8 => Buf::U8(Vec::with_capacity(n), false),
            DType::Bool => Buf::U8(Vec::with_capacity(n), true),
        }
    }

    /// Copies little-endian data to byte offset `at`. (On big-endian
    /// machines the elements are swapped in [`Buf::into_tensor`].)
    fn write(&mut self, at: usize, data: &[u8]) {
        match self {
            Buf::F32(v) => write_spare(v, at, data),
            Buf::F64(v) => write_spare(v, at, data),
            Buf::I32(v) => write_spare(v, at, data),
            Buf::I64(v) => write_spare(v, at, data),
            Buf::U8(v, _) => write_spare(v, at, data),
        }
    }

    /// The tensor, once all `n` elements were written.
    ///
    /// # Safety
    /// Every byte of the `n` elements was written with [`Buf::write`].
    unsafe fn into_tensor(self, name: &str, shape: Vec<usize>) -> Result<Tensor> {
        let n = shape.iter().product();
        // SAFETY (all arms): the caller wrote every byte; u8 bools are
        // checked before they become bools.
        let self_ = match self {
            Buf::F32(v) => Buf::F32(unsafe { assume_written(v, n) }),
            Buf::F64(v) => Buf::F64(unsafe { assume_written(v, n) }),
            Buf::I32(v) => Buf::I32(unsafe { assume_written(v, n) }),
            Buf::I64(v) => Buf::I64(unsafe { assume_written(v, n) }),
            Buf::U8(v, b) => Buf::U8(unsafe { assume_written(v, n) }, b),
        };
        #[cfg(target_endian = "big")]
        fn swap<T>(mut v: Vec<T>, f: fn(T) -> T) -> Vec<T>
        where
            T: Copy,
        {
            v.iter_mut().for_each(|x| *x = f(*x));
            v
        }
        #[cfg(target_endian = "little")]
        fn swap<T>(v: Vec<T>, _: fn(T) -> T) -> Vec<T> {
            v
        }
        let data = match self_ {
            Buf::F32(v) => Data::F32(swap(v, |x| f32::from_bits(u32::from_le(x.to_bits()))).into()),
            Buf::F64(v) => Data::F64(swap(v, |x| f64::from_bits(u64::from_le(x.to_bits()))).into()),
            Buf::I32(v) => Data::I32(swap(v, i32::from_le).into()),
            Buf::I64(v) => Data::I64(swap(v, i64::from_le).into()),
            Buf::U8(v, false) => Data::U8(v.into()),
            Buf::U8(v, true) => {
                if let Some(b) = v.iter().find(|&&b| b > 1) {
                    return Err(Error::Invalid(format!(
                        "tensor `{name}`: a bool element has byte value {b} (must be 0 or 1)"
                    )));
                }
                Data::Bool(std::sync::Arc::new(v.into_iter().map(|b| b == 1).collect()))
            }
        };
        Tensor::from_data(shape, data).map_err(|e| Error::Invalid(format!("tensor `{name}`: {e}")))
    }
}

struct Partial {
    name: String,
    role: TensorRole,
    shape: Vec<usize>,
    total: usize,
    filled: usize,
    buf: Buf,
}

/// Finds the region a chunk names (only those this side may read).
pub type RegionLookup = Box<dyn Fn(u64) -> Option<Arc<Region>> + Send + Sync>;

/// The lookup that finds `region` alone.
pub fn only(region: Arc<Region>) -> RegionLookup {
    Box::new(move |id| (id == region.id()).then(|| region.clone()))
}

/// Reassembles the tensors of one stream from its chunks, in order,
/// checking names, offsets, dtypes, shapes and the [`Limits`].
pub struct Assembler {
    limits: Limits,
    request_bytes: u64,
    current: Option<Partial>,
    regions: Option<RegionLookup>,
}

impl Assembler {
    pub fn new(limits: Limits) -> Assembler {
        Assembler {
            limits,
            request_bytes: 0,
            current: None,
            regions: None,
        }
    }

    /// Accepts chunks whose data lie in the shared-memory regions `lookup`
    /// finds (see [`pack_shm`]).
    pub fn with_regions(mut self, lookup: RegionLookup) -> Assembler {
        self.regions = Some(lookup);
        self
    }

    /// Tensor bytes announced so far in this stream.
    pub fn bytes(&self) -> u64 {
        self.request_bytes
    }

    /// Adds the next chunk; returns the tensor it completes, if any.
    pub fn add(&mut self, chunk: TensorChunk) -> Result<Option<Received>> {
        let shm = chunk.shm_region != 0;
        if shm && !chunk.data.is_empty() {
            return Err(Error::Invalid(format!(
                "a chunk of tensor `{}` both carries data and names shared-memory region {}",
                chunk.name, chunk.shm_region
            )));
        }
        if chunk.data.len() > CHUNK_BYTES {
            return Err(Error::TooLarge {
                what: "chunk of tensor",
                name: chunk.name,
                bytes: chunk.data.len() as u64,
                limit: CHUNK_BYTES as u64,
                setting: "CHUNK_BYTES",
            });
        }
        if chunk.offset == 0 {
            if let Some(p) = &self.current {
                return Err(Error::Invalid(format!(
                    "tensor `{}` ended after {} of its {} bytes, before `{}` began",
                    p.name, p.filled, p.total, chunk.name
                )));
            }
            self.current = Some(self.begin(&chunk)?);
        }
        let Some(p) = self.current.as_mut() else {
            return Err(Error::Invalid(format!(
                "a chunk of tensor `{}` at offset {} came before its first chunk (offset 0)",
                chunk.name, chunk.offset
            )));
        };
        if chunk.name != p.name || chunk.offset != p.filled as u64 {
            return Err(Error::Invalid(format!(
                "expected the chunk of tensor `{}` at offset {}, got tensor `{}` at offset {}",
                p.name, p.filled, chunk.name, chunk.offset
            )));
        }
        if shm {
            // The rest of the tensor, from the region.
            let len = (p.total - p.filled) as u64;
            let region = self
                .regions
                .as_ref()
                .and_then(|lookup| lookup(chunk.shm_region))
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "tensor `{}` is in shared-memory region {}, which this side did not \
                         open for this call",
                        p.name, chunk.shm_region
                    ))
                })?;
            // SAFETY: the peer wrote these bytes before sending this chunk
            // and, by the protocol, writes them again only after this call
            // has ended (a push's reply; a pull's end).
            let data = unsafe { region.read(chunk.shm_offset, len) }.ok_or_else(|| {
                Error::Invalid(format!(
                    "tensor `{}`: {len} bytes at offset {} run past shared-memory region {} \
                     ({} bytes)",
                    p.name,
                    chunk.shm_offset,
                    chunk.shm_region,
                    region.capacity()
                ))
            })?;
            p.buf.write(p.filled, data);
            p.filled = p.total;
        } else {
            let end = p.filled + chunk.data.len();
            if end > p.total {
                return Err(Error::Invalid(format!(
                    "tensor `{}`: chunk at offset {} with {} bytes runs past its {} bytes",
                    p.name,
                    p.filled,
                    chunk.data.len(),
                    p.total
                )));
            }
            p.buf.write(p.filled, &chunk.data);
            p.filled = end;
        }
        if p.filled < p.total {
            return Ok(None);
        }
        let p = self.current.take().expect("checked above");
        // SAFETY: chunks are contiguous from offset 0 (checked above) and
        // together cover all `total` bytes.
        let value = unsafe { p.buf.into_tensor(&p.name, p.shape) }?;
        Ok(Some(Received {
            name: p.name,
            role: p.role,
            value,
        }))
    }

    /// Checks that the stream ended between tensors.
    pub fn finish(&self) -> Result<()> {
        match &self.current {
            Some(p) => Err(Error::Invalid(format!(
                "the stream ended inside tensor `{}` ({} of {} bytes received)",
                p.name, p.filled, p.total
            ))),
            None => Ok(()),
        }
    }

    /// Checks the first chunk of a tensor and allocates its buffer.
    fn begin(&mut self, c: &TensorChunk) -> Result<Partial> {
        let name = &c.name;
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(Error::Invalid(format!(
                "a tensor name must have 1 to {MAX_NAME_BYTES} bytes, got {} bytes",
                name.len()
            )));
        }
        let dtype = match DataType::try_from(c.dtype) {
            Ok(d) if (d as i32) < 100 => dtype_from_proto(d as i32),
            _ => None,
        }
        .ok_or_else(|| Error::DType {
            name: name.clone(),
            detail: format!(
                "dtype {} is not one psflow holds (float, double, int32, int64, uint8, bool)",
                DataType::try_from(c.dtype)
                    .map(|d| d.as_str_name().to_string())
                    .unwrap_or_else(|_| c.dtype.to_string())
            ),
        })?;
        if c.shape.len() > MAX_RANK {
            return Err(Error::Invalid(format!(
                "tensor `{name}` has rank {}, more than the limit of {MAX_RANK}",
                c.shape.len()
            )));
        }
        let elements = c
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size() as u64));
        let Some(bytes) = elements else {
            return Err(Error::Invalid(format!(
                "tensor `{name}` of shape {:?} has too many elements to count",
                c.shape
            )));
        };
        if bytes != c.total_bytes {
            return Err(Error::Invalid(format!(
                "tensor `{name}`: a {dtype} tensor of shape {:?} has {bytes} bytes, \
                 the chunk says {}",
                c.shape, c.total_bytes
            )));
        }
        if bytes > self.limits.max_tensor_bytes {
            return Err(Error::TooLarge {
                what: "tensor",
                name: name.clone(),
                bytes,
                limit: self.limits.max_tensor_bytes,
                setting: "max_tensor_bytes",
            });
        }
        let request = self.request_bytes + bytes;
        if request > self.limits.max_request_bytes {
            return Err(Error::TooLarge {
                what: "request, at tensor",
                name: name.clone(),
                bytes: request,
                limit: self.limits.max_request_bytes,
                setting: "max_request_bytes",
            });
        }
        self.request_bytes = request;
        let role = TensorRole::try_from(c.role)
            .map_err(|_| Error::Invalid(format!("tensor `{name}`: unknown role {}", c.role)))?;
        let shape: Vec<usize> = c.shape.iter().map(|&d| d as usize).collect();
        let n = shape.iter().product();
        Ok(Partial {
            name: name.clone(),
            role,
            shape,
            total: bytes as usize,
            filled: 0,
            buf: Buf::with_capacity(dtype, n),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reassemble(messages: Vec<Vec<TensorChunk>>, limits: Limits) -> Result<Vec<Received>> {
        let mut a = Assembler::new(limits);
        let mut out = Vec::new();
        for m in messages {
            for c in m {
                out.extend(a.add(c)?);
            }
        }
        a.finish()?;
        Ok(out)
    }

    #[test]
    fn every_dtype_round_trips_and_large_tensors_are_chunked() {
        let n = CHUNK_BYTES / 4 * 2 + 3; // three chunks
        let big = Tensor::new(vec![n], (0..n).map(|i| i as f32 * 0.5).collect()).unwrap();
        let tensors = [
            ("big", big),
            ("f64", Tensor::new(vec![2], vec![1.5f64, -2.0]).unwrap()),
            ("i32", Tensor::new(vec![1, 2], vec![7i32, -8]).unwrap()),
            ("i64", Tensor::scalar(1i64 << 40)),
            ("u8", Tensor::new(vec![3], vec![1u8, 2, 255]).unwrap()),
            ("bool", Tensor::new(vec![2], vec![true, false]).unwrap()),
            ("empty", Tensor::new(vec![0, 4], Vec::<f32>::new()).unwrap()),
        ];
        let messages = pack(
            tensors.iter().map(|(n, t)| (*n, TensorRole::Gradient, t)),
            Start::Full,
        );
        // Two full chunks of the big tensor, each a message; its 12-byte
        // tail shares the last message with the small tensors.
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[2].len(), 1 + tensors.len() - 1);
        assert!(messages
            .iter()
            .flatten()
            .all(|c| c.data.len() <= CHUNK_BYTES));
        let back = reassemble(messages, Limits::default()).unwrap();
        assert_eq!(back.len(), tensors.len());
        for (r, (n, t)) in back.iter().zip(&tensors) {
            assert_eq!(&r.name, n);
            assert_eq!(&r.value, t);
        }
    }

    #[test]
    fn growing_messages_start_small_and_grow_to_the_full_size() {
        // 200 tensors of 16 KiB: 3.2 MB in all.
        let t = Tensor::new(vec![4096], vec![1f32; 4096]).unwrap();
        let names: Vec<String> = (0..200).map(|i| format!("layer_{i}")).collect();
        let sizes = |start| -> Vec<usize> {
            pack(
                names.iter().map(|n| (n.as_str(), TensorRole::Gradient, &t)),
                start,
            )
            .iter()
            .map(|m| m.iter().map(|c| c.data.len()).sum())
            .collect()
        };
        // Full messages from the first one on.
        let full = sizes(Start::Full);
        assert!(
            full[..full.len() - 1]
                .iter()
                .all(|&d| d > MESSAGE_DATA_BYTES / 2 && d <= MESSAGE_DATA_BYTES),
            "{full:?}"
        );
        let messages = pack(
            names.iter().map(|n| (n.as_str(), TensorRole::Gradient, &t)),
            Start::Growing,
        );
        let data = sizes(Start::Growing);
        assert!(data[0] <= FIRST_MESSAGE_DATA_BYTES, "{data:?}");
        assert!(data[1] > data[0] && data[2] > data[1], "{data:?}");
        assert!(data.iter().all(|&d| d <= MESSAGE_DATA_BYTES), "{data:?}");
        assert!(data[data.len() - 2] > MESSAGE_DATA_BYTES / 2, "{data:?}");
        assert_eq!(data.iter().sum::<usize>(), 200 * 4096 * 4);
        // Order is kept, so the first layers arrive first.
        let order: Vec<&str> = messages.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(order, names);
    }

    #[test]
    fn sending_shares_the_tensor_buffer() {
        let t = Tensor::new(vec![4], vec![1f32, 2.0, 3.0, 4.0]).unwrap();
        let b = tensor_bytes(&t);
        assert_eq!(b.as_ptr(), t.f32s("test").unwrap().as_ptr().cast::<u8>());
    }

    #[test]
    fn framed_push_requests_are_the_bytes_prost_writes() {
        use psflow_proto::ps::PushRequest;
        let big = Tensor::new(vec![700, 1000], vec![0.5f32; 700_000]).unwrap();
        let small = Tensor::new(vec![2], vec![1i64, -1]).unwrap();
        let messages = pack(
            [
                ("w", TensorRole::Gradient, &big),
                ("s", TensorRole::Assign, &small),
            ],
            Start::Full,
        );
        assert!(messages.len() > 1);
        for (i, chunks) in messages.into_iter().enumerate() {
            let header = (i == 0).then(|| PushHeader {
                job_id: "job".into(),
                worker: 3,
                base_version: 41,
                partial: true,
            });
            let mut pieces = vec![];
            encode_push_request(header.as_ref(), chunks.clone(), &mut pieces);
            let ours: Vec<u8> = pieces.iter().flat_map(|b| b.iter().copied()).collect();
            let m = PushRequest { header, chunks };
            // The same message and length as prost's (a chunk's data field
            // comes last, after its role, so the bytes may be in another
            // order).
            assert_eq!(ours[0], 0);
            assert_eq!(&ours[1..5], &(m.encoded_len() as u32).to_be_bytes());
            assert_eq!(ours.len(), 5 + m.encoded_len());
            assert_eq!(
                decode_framed::<PushRequest>(&ours).unwrap(),
                m,
                "message {i}"
            );
        }
    }

    #[test]
    fn tensors_travel_through_a_region_while_they_fit_then_in_the_messages() {
        let region = Arc::new(Region::create(9, 8192).unwrap());
        let a = Tensor::new(vec![1000], (0..1000).map(|i| i as f32).collect()).unwrap();
        let b = Tensor::new(vec![2, 3], vec![1i64, 2, 3, 4, 5, 6]).unwrap();
        let c = Tensor::new(vec![1500], vec![0.25f32; 1500]).unwrap(); // does not fit
        let d = Tensor::new(vec![2], vec![true, false]).unwrap(); // after one that did not
        let tensors = [("a", &a), ("b", &b), ("c", &c), ("d", &d)];
        let mut cursor = 0;
        let messages = pack_shm(
            tensors.iter().map(|(n, t)| (*n, TensorRole::Gradient, *t)),
            Start::Full,
            Some((&region, &mut cursor)),
        );
        let chunks: Vec<&TensorChunk> = messages.iter().flatten().collect();
        let in_region: Vec<&str> = chunks
            .iter()
            .filter(|c| c.shm_region == 9)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(in_region, ["a", "b"]);
        assert!(chunks
            .iter()
            .all(|c| (c.shm_region == 0) != c.data.is_empty()));
        // `b` starts on the cache line after `a`'s 4000 bytes.
        assert_eq!(chunks[1].shm_offset, 4032);
        assert_eq!(cursor, 4032 + 64);

        let lookup = |r: &Arc<Region>| only(r.clone());
        let mut asm = Assembler::new(Limits::default()).with_regions(lookup(&region));
        let mut back = vec![];
        for c in messages.iter().flatten() {
            back.extend(asm.add(c.clone()).unwrap());
        }
        asm.finish().unwrap();
        let want: Vec<(&str, &Tensor)> = tensors.to_vec();
        let got: Vec<(&str, &Tensor)> = back.iter().map(|r| (r.name.as_str(), &r.value)).collect();
        assert_eq!(got, want);

        // A side that opened no region, another region, a range past the
        // end, data and a region at once: clear errors.
        let first = chunks[0].clone();
        let e = Assembler::new(Limits::default())
            .add(first.clone())
            .unwrap_err();
        assert!(e.to_string().contains("did not open"), "{e}");
        let other = Arc::new(Region::create(10, 4096).unwrap());
        let e = Assembler::new(Limits::default())
            .with_regions(lookup(&other))
            .add(first.clone())
            .unwrap_err();
        assert!(e.to_string().contains("region 9"), "{e}");
        let mut past = first.clone();
        past.shm_offset = 8000;
        let e = Assembler::new(Limits::default())
            .with_regions(lookup(&region))
            .add(past)
            .unwrap_err();
        assert!(e.to_string().contains("run past"), "{e}");
        let mut both = first;
        both.data = Bytes::from_static(b"1234");
        let e = Assembler::new(Limits::default())
            .with_regions(lookup(&region))
            .add(both)
            .unwrap_err();
        assert!(e.to_string().contains("both carries data"), "{e}");
    }

    #[test]
    fn limits_and_malformed_streams_are_errors() {
        let t = Tensor::new(vec![1000], vec![0f32; 1000]).unwrap();
        let small = Limits {
            max_tensor_bytes: 1000,
            max_request_bytes: 10_000,
        };
        let e =
            reassemble(pack([("w", TensorRole::Gradient, &t)], Start::Full), small).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("`w`") && e.to_string().contains("max_tensor_bytes"));

        let many: Vec<_> = (0..3).map(|_| t.clone()).collect();
        let limits = Limits {
            max_tensor_bytes: 4000,
            max_request_bytes: 10_000,
        };
        let e = reassemble(
            pack(
                many.iter().map(|t| ("w", TensorRole::Gradient, t)),
                Start::Full,
            ),
            limits,
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_request_bytes"), "{e}");

        // A chunk missing, a stream cut short, a bad total.
        let big = Tensor::new(vec![CHUNK_BYTES / 2], vec![0f32; CHUNK_BYTES / 2]).unwrap();
        let mut chunks: Vec<_> = pack([("b", TensorRole::Gradient, &big)], Start::Full)
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(chunks.len(), 2);
        let mut a = Assembler::new(Limits::default());
        assert!(a.add(chunks[1].clone()).is_err());
        let mut a = Assembler::new(Limits::default());
        a.add(chunks[0].clone()).unwrap();
        assert!(a.finish().unwrap_err().to_string().contains("ended inside"));
        chunks[0].total_bytes += 4;
        assert!(Assembler::new(Limits::default())
            .add(chunks[0].clone())
            .is_err());

        let mut bad = pack([("f", TensorRole::Gradient, &t)], Start::Full)
            .remove(0)
            .remove(0);
        bad.dtype = DataType::DtString as i32;
        let e = Assembler::new(Limits::default()).add(bad).unwrap_err();
        assert!(e.to_string().contains("DT_STRING"), "{e}");
    }
}
