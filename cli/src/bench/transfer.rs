//! `psflow bench transfer`: push + pull of N MiB of parameters between one
//! client and one parameter server on loopback gRPC, next to a raw TCP
//! loopback transfer of the same bytes in the same run, round after round
//! (issue 4 §8; target: the PS at ≥ 50% of raw TCP). The PS figures are of
//! the gRPC messages; the same push + pull through shared memory, which a
//! client on the PS's host uses by default, is reported beside them.

use anyhow::{anyhow, Context};
use clap::Args;
use serde_json::json;

#[derive(Args, Debug)]
pub struct BenchTransferArgs {
    /// MiB of parameters moved each way (in 4 MiB tensors).
    #[arg(long, default_value_t = 64)]
    pub mib: usize,
    /// Timed rounds (after one warm-up), each through the PS and then over
    /// raw TCP; medians are reported.
    #[arg(long, default_value_t = 15)]
    pub repeats: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &BenchTransferArgs) -> std::result::Result<(), (bool, anyhow::Error)> {
    if args.mib == 0 || args.mib > 4096 || args.repeats == 0 {
        return Err((
            true,
            anyhow!("--mib must be 1..=4096 and --repeats at least 1"),
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(|e| (false, e))?;
    let r = runtime
        .block_on(psflow_ps::bench::transfer(args.mib, args.repeats))
        .context("transfer benchmark")
        .map_err(|e| (false, e))?;
    if args.json {
        let j = json!({
            "bytes": r.bytes,
            "tensors": r.tensors,
            "repeats": r.repeats,
            "push_mbps": r.push_mbps,
            "pull_mbps": r.pull_mbps,
            "ps_mbps": r.ps_mbps,
            "tcp_mbps": r.tcp_mbps,
            "ratio": r.ratio,
            "ratio_min": r.ratio_range.0,
            "ratio_max": r.ratio_range.1,
            "shm_mbps": r.shm_mbps,
            "rounds_ms": r.rounds.iter().map(|ts| {
                let [push, pull, tcp, shm] = ts.map(|t| t.as_secs_f64() * 1e3);
                json!({"push": push, "pull": pull, "tcp": tcp, "shm_push_pull": shm})
            }).collect::<Vec<_>>(),
        });
        println!("{j}");
    } else {
        println!(
            "{} MiB in {} tensors, median of {} rounds (MB = 10^6 bytes)",
            r.bytes >> 20,
            r.tensors,
            r.repeats
        );
        println!("  PS push            {:>9.0} MB/s", r.push_mbps);
        println!("  PS pull            {:>9.0} MB/s", r.pull_mbps);
        println!("  PS push + pull     {:>9.0} MB/s", r.ps_mbps);
        println!("  raw TCP there+back {:>9.0} MB/s", r.tcp_mbps);
        println!(
            "  ratio PS / TCP     {:>9.2} (target ≥ 0.50; median of the rounds' ratios, {:.2}–{:.2})",
            r.ratio, r.ratio_range.0, r.ratio_range.1
        );
        println!(
            "  shared memory push + pull {:>9.0} MB/s ({:.1}x raw TCP; what a worker on the PS's \
             host uses)",
            r.shm_mbps,
            r.shm_mbps / r.tcp_mbps
        );
    }
    Ok(())
}
