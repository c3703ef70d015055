//! psflow parameter server: variable shards, optimizer slots, sync/async
//! aggregation and the PS gRPC service.
