//! Pull served without tonic's encoder, so that pulled values go to HTTP/2
//! straight from the shard's buffers.
//!
//! tonic encodes every response message into its own buffer: for a pull
//! that is a copy of every variable, on the critical path of a sync step
//! (the worker waits for the first layers' values). [`PsHttp`] wraps the
//! generated server and answers `Pull` itself: the request is decoded as
//! tonic would, and each response message is written as its protobuf
//! framing (a few bytes per chunk) interleaved with the chunks' data, which
//! are [`Bytes`] sharing the tensors' buffers. HTTP/2 sends them without
//! copying. On the wire it is the same gRPC stream of `PullResponse`s;
//! every other call goes to the generated server.

use std::convert::Infallible;

use bytes::Bytes;
use futures::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use psflow_proto::ps as pb;
use psflow_proto::ps::parameter_server_server::ParameterServerServer;
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::server::NamedService;
use tonic::Status;

use crate::limits::MAX_MESSAGE_BYTES;
use crate::service::{pull_messages, PsService};
use crate::wire::{decode_framed, encode_framed};

/// The gRPC path of Pull.
pub const PULL_PATH: &str = "/psflow.ps.ParameterServer/Pull";

/// The parameter-server service as tonic serves it, with Pull answered
/// without copying the pulled values (see the module docs).
#[derive(Clone)]
pub struct PsHttp {
    service: PsService,
    generated: ParameterServerServer<PsService>,
}

impl PsHttp {
    pub fn new(service: PsService) -> PsHttp {
        PsHttp {
            generated: service.clone().into_server(),
            service,
        }
    }
}

impl NamedService for PsHttp {
    const NAME: &'static str = <ParameterServerServer<PsService> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for PsHttp
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != PULL_PATH {
            return self.generated.call(req);
        }
        let service = self.service.clone();
        Box::pin(async move {
            Ok(match pull(&service, req).await {
                Ok(r) => r,
                Err(status) => status.into_http(),
            })
        })
    }
}

async fn pull<B>(
    service: &PsService,
    req: http::Request<B>,
) -> Result<http::Response<tonic::body::Body>, Status>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    let body = Limited::new(req.into_body(), MAX_MESSAGE_BYTES + 5)
        .collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("reading the pull request: {e}")))?
        .to_bytes();
    let request = decode_framed::<pb::PullRequest>(&body)?;
    let answer = service.pull_values(&request).await?;
    // The client's region, if it gave one this PS knows: values are
    // written there, one after the other, while they fit.
    let region = service.region(&request.job_id, request.shm_region);
    let (version, batches) = service.pull_batches(request.job_id, answer);
    // Each batch of values as its messages' pieces; the trailers carry
    // the status, an error's after the values sent before it.
    let state = Some((Box::pin(batches), region, 0usize));
    let frames = futures::stream::unfold(state, move |state| async move {
        let (mut batches, region, mut cursor) = state?;
        Some(match batches.next().await {
            Some(Ok(values)) => {
                let mut pieces = Vec::new();
                let shm = region.as_deref().map(|r| (r, &mut cursor));
                for chunks in pull_messages(&values, shm) {
                    encode_response(version, chunks, &mut pieces);
                }
                let frames: Vec<_> = pieces.into_iter().map(Frame::data).collect();
                (frames, Some((batches, region, cursor)))
            }
            Some(Err(status)) => (vec![Frame::trailers(trailers(&status))], None),
            None => (vec![Frame::trailers(trailers(&Status::ok("")))], None),
        })
    })
    .flat_map(|frames| futures::stream::iter(frames.into_iter().map(Ok::<_, Infallible>)));
    let body = tonic::body::Body::new(StreamBody::new(frames));
    let mut response = http::Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(response)
}

/// The trailers that end a gRPC response with `status`.
fn trailers(status: &Status) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only a message that cannot be a header value gets here.
        map.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    }
    map
}

/// Appends one length-prefixed `PullResponse { version, chunks }` to
/// `pieces` (see [`encode_framed`]).
fn encode_response(version: u64, chunks: Vec<pb::TensorChunk>, pieces: &mut Vec<Bytes>) {
    // PullResponse.version is field 1, a varint.
    let mut fields = Vec::with_capacity(11);
    if version != 0 {
        fields.push(1 << 3);
        prost::encoding::encode_varint(version, &mut fields);
    }
    encode_framed(&fields, chunks, pieces);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{pack, Start};
    use prost::Message;
    use psflow_kernels::Tensor;

    fn decode_all(pieces: &[Bytes]) -> Vec<pb::PullResponse> {
        let all: Vec<u8> = pieces.iter().flat_map(|b| b.iter().copied()).collect();
        let mut rest = &all[..];
        let mut out = vec![];
        while !rest.is_empty() {
            assert_eq!(rest[0], 0, "uncompressed");
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            out.push(pb::PullResponse::decode(&rest[5..5 + len]).unwrap());
            rest = &rest[5 + len..];
        }
        out
    }

    #[test]
    fn messages_decode_as_prost_encodes_them_and_share_the_data() {
        let big = Tensor::new(vec![300, 1000], (0..300_000).map(|i| i as f32).collect()).unwrap();
        let small = Tensor::new(vec![3], vec![1.0f32, -2.0, 3.5]).unwrap();
        let empty = Tensor::new(vec![0], Vec::<f32>::new()).unwrap();
        let values = [("a/kernel", &big), ("b", &small), ("empty", &empty)];
        for version in [0u64, 1, 300, u64::MAX] {
            let messages = pack(
                values
                    .iter()
                    .map(|(n, t)| (*n, pb::TensorRole::Gradient, *t)),
                Start::Growing,
            );
            assert!(messages.len() > 1, "the big tensor spans messages");
            let mut pieces = vec![];
            for m in &messages {
                encode_response(version, m.clone(), &mut pieces);
            }
            let want: Vec<pb::PullResponse> = messages
                .iter()
                .map(|chunks| pb::PullResponse {
                    version,
                    chunks: chunks.clone(),
                })
                .collect();
            assert_eq!(decode_all(&pieces), want);
            // The same bytes prost would write, message by message.
            let mut prost_bytes = vec![];
            for m in &want {
                prost_bytes.push(0u8);
                prost_bytes.extend((m.encoded_len() as u32).to_be_bytes());
                prost_bytes.extend(m.encode_to_vec());
            }
            let ours: Vec<u8> = pieces.iter().flat_map(|b| b.iter().copied()).collect();
            assert_eq!(ours, prost_bytes);
        }
        // The data pieces are the tensor's own memory, not copies.
        let mut pieces = vec![];
        let messages = pack([("a/kernel", pb::TensorRole::Gradient, &big)], Start::Full);
        encode_response(1, messages[0].clone(), &mut pieces);
        let base = big.values::<f32>("big").unwrap().as_ptr() as usize;
        assert!(pieces.iter().any(|p| p.as_ptr() as usize == base));
    }

    #[test]
    fn an_empty_message_is_only_its_prefix_and_version() {
        let mut pieces = vec![];
        encode_response(7, vec![], &mut pieces);
        assert_eq!(
            decode_all(&pieces),
            vec![pb::PullResponse {
                version: 7,
                chunks: vec![]
            }]
        );
    }

    #[test]
    fn malformed_requests_are_clear_errors() {
        let ok = pb::PullRequest {
            job_id: "j".into(),
            ..Default::default()
        };
        let mut body = vec![0u8];
        body.extend((ok.encoded_len() as u32).to_be_bytes());
        body.extend(ok.encode_to_vec());
        assert_eq!(decode_framed::<pb::PullRequest>(&body).unwrap(), ok);

        let e = decode_framed::<pb::PullRequest>(&body[..3]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("5-byte"), "{}", e.message());
        let e = decode_framed::<pb::PullRequest>(&body[..body.len() - 1]).unwrap_err();
        assert!(e.message().contains("length prefix"), "{}", e.message());
        let mut compressed = body.clone();
        compressed[0] = 1;
        let e = decode_framed::<pb::PullRequest>(&compressed).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        let mut huge = body.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        let e = decode_framed::<pb::PullRequest>(&huge).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    }
}
