//! `psflow`: the one binary. Every role and client command is a subcommand.

mod bench;
mod table;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "psflow",
    version,
    about = "Distributed parameter-server training for convolutional networks"
)]
struct Cli {
    /// Kernel threads (0: one per core).
    #[arg(long, global = true, default_value_t = 0, env = "PSFLOW_THREADS")]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure psflow's kernels and programs.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time the MobileNet-shaped kernels (depthwise, pointwise, batch norm + ReLU6).
    Kernels {
        /// Batch size.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Timed repetitions per kernel (the median is reported).
        #[arg(long, default_value_t = 15)]
        repeats: usize,
        /// Only kernels whose key (kernel/shape/sSTRIDE) contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    psflow_kernels::threads::init(cli.threads);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Bench(BenchCommand::Kernels {
            batch,
            repeats,
            filter,
            json,
        }) => bench_kernels(batch, repeats, filter, json),
    }
}

fn bench_kernels(
    batch: usize,
    repeats: usize,
    filter: Option<String>,
    json: bool,
) -> Result<ExitCode> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .expect("static template"),
    );
    let opts = bench::kernels::Options {
        batch,
        repeats,
        filter,
    };
    let report = bench::kernels::run(&opts, |i, n, key| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
        bar.set_message(key.to_string());
    })?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let mut t = table::Table::new(&["kernel", "shape", "stride", "ms", "GFLOP/s", "GB/s"])
            .right_align(&[2, 3, 4, 5]);
        for r in &report.results {
            t.row(vec![
                r.kernel.clone(),
                r.shape.clone(),
                r.stride.to_string(),
                format!("{:.3}", r.ms),
                format!("{:.1}", r.gflops),
                format!("{:.1}", r.gbps),
            ]);
        }
        print!("{}", t.render());
        println!("threads: {}, batch: {}", report.threads, report.batch);
    }
    Ok(ExitCode::SUCCESS)
}
