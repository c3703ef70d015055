//! `psflow`: the one binary. Every role and client command is a subcommand.

mod alloc;
mod bench;
mod cluster;
mod commands;
mod roles;
mod table;
mod trainer;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use psflow_coordinator::membership::Role;

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
    /// Bind each kernel thread to its own core: auto (when there is one
    /// kernel thread per core), on, or off (on a machine shared with other
    /// busy processes).
    #[arg(
        long,
        global = true,
        default_value = "auto",
        env = "PSFLOW_PIN_THREADS"
    )]
    pin_threads: psflow_kernels::threads::Pin,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Execute a graph once: feed .npy files, write the fetches as .npy.
    Run {
        /// The GraphDef (binary protobuf, as TensorFlow writes it).
        #[arg(long)]
        graph: PathBuf,
        /// A feed, `NAME=FILE.npy` (NAME: `node` or `node:port`); repeatable.
        #[arg(long = "feed", value_name = "NAME=FILE")]
        feeds: Vec<String>,
        /// A tensor to fetch, `node` or `node:port`; repeatable.
        #[arg(long = "fetch", value_name = "NAME", required = true)]
        fetches: Vec<String>,
        /// A node run first, on its own, before the fetches (e.g. `init`,
        /// which initialises the variables of a graph `psflow graph build`
        /// wrote); repeatable, in order.
        #[arg(long = "init", value_name = "NODE")]
        inits: Vec<String>,
        /// A node run with the fetches for its effect (e.g. `train_op`, the
        /// training step of `psflow graph build --train`); repeatable.
        #[arg(long = "target", value_name = "NODE")]
        targets: Vec<String>,
        /// Directory for the fetched tensors (`<fetch>.npy`, `/` and `:` → `_`).
        #[arg(long)]
        out_dir: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Build model graphs and count their parameters and multiply-adds.
    #[command(subcommand)]
    Graph(commands::graph::GraphCommand),
    /// Train a model of the zoo on one machine (writes RUN_DIR: events,
    /// checkpoints, loss.svg, summary.json).
    Train(Box<commands::train::TrainArgs>),
    /// Top-1 / top-5 of a training run's latest checkpoint.
    Eval(commands::eval::EvalArgs),
    /// Write a run's latest checkpoint as a frozen inference GraphDef
    /// (weights as constants, batch norm folded) for `psflow run` or TensorFlow.
    Export(commands::export::ExportArgs),
    /// A whole cluster in this process (2 workers, 2 parameter servers on
    /// loopback gRPC) training MobileNet α=0.25 on generated data.
    Quickstart(commands::quickstart::QuickstartArgs),
    /// Measure psflow's kernels and programs.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run a coordinator: accepts jobs, places and partitions them, drives
    /// the workers (leader-elected in etcd; a second one waits as a standby).
    Coordinator(roles::RoleArgs),
    /// Run a parameter server: holds variable shards, applies the updates.
    Ps(roles::RoleArgs),
    /// Run a worker: computes forward and backward passes for jobs.
    Worker(roles::WorkerArgs),
    /// Submit a training job to a coordinator (the flags of `psflow train`).
    Submit(Box<commands::jobs::SubmitArgs>),
    /// The coordinator's jobs, or one job.
    Status(commands::jobs::StatusArgs),
    /// Stop a job.
    Cancel(commands::jobs::CancelArgs),
    /// A job's log: its steps, events and state changes.
    Logs(commands::jobs::LogsArgs),
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
    /// Time the MobileNet-shaped CUDA kernels on a GPU (events, medians)
    /// next to the card's measured copy bandwidth and SGEMM rate.
    Cuda(bench::cuda::BenchCudaArgs),
    /// Training images/s of a zoo model on random tensors (no input pipeline).
    Train(bench::train::BenchTrainArgs),
    /// Push + pull of parameters through a loopback parameter server, next
    /// to raw TCP.
    Transfer(bench::transfer::BenchTransferArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    alloc::keep_freed_memory();
    psflow_kernels::threads::init(cli.threads, cli.pin_threads);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run {
            graph,
            feeds,
            fetches,
            inits,
            targets,
            out_dir,
            json,
        } => {
            let args = commands::run::Args {
                graph,
                feeds,
                fetches,
                inits,
                targets,
                out_dir,
                json,
            };
            match commands::run::execute(&args) {
                Ok(report) => {
                    if args.json {
                        println!("{}", serde_json::to_string(&report)?);
                    } else {
                        commands::run::print_table(&report);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {}", one_line(&e));
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Graph(cmd) => commands::graph::dispatch(cmd),
        Command::Eval(args) => user_result(commands::eval::run(&args)),
        Command::Export(args) => user_result(commands::export::run(&args)),
        Command::Train(args) => user_result(commands::train::run(&args)),
        Command::Quickstart(args) => user_result(commands::quickstart::run(&args)),
        Command::Coordinator(args) => role(Role::Coordinator, &args, None),
        Command::Ps(args) => role(Role::Ps, &args, None),
        Command::Worker(args) => role(Role::Worker, &args.role, Some(&args.device)),
        Command::Submit(args) => user_result(commands::jobs::run_submit(&args)),
        Command::Status(args) => user_result(commands::jobs::run_status(&args)),
        Command::Cancel(args) => user_result(commands::jobs::run_cancel(&args)),
        Command::Logs(args) => user_result(commands::jobs::run_logs(&args)),
        Command::Bench(BenchCommand::Cuda(args)) => user_result(bench::cuda::run(&args)),
        Command::Bench(BenchCommand::Train(args)) => user_result(bench::train::run(&args)),
        Command::Bench(BenchCommand::Transfer(args)) => user_result(bench::transfer::run(&args)),
        Command::Bench(BenchCommand::Kernels {
            batch,
            repeats,
            filter,
            json,
        }) => bench_kernels(batch, repeats, filter, json),
    }
}

/// Runs a long-running role; exit 0 after SIGTERM, 1 when it cannot serve.
fn role(role: Role, args: &roles::RoleArgs, device: Option<&str>) -> Result<ExitCode> {
    match roles::run(role, args, device) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            Ok(ExitCode::from(1))
        }
    }
}

/// Exit 0, 2 for a usage error (bad flags, missing data), 1 otherwise.
fn user_result(r: std::result::Result<(), (bool, anyhow::Error)>) -> Result<ExitCode> {
    match r {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err((usage, e)) => {
            eprintln!("error: {}", one_line(&e));
            Ok(ExitCode::from(if usage { 2 } else { 1 }))
        }
    }
}

/// An error chain on one line (`outer: inner: cause`).
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
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
        let m = &report.machine;
        let mut t = table::Table::new(&[
            "kernel", "shape", "stride", "ms", "GFLOP/s", "GB/s", "% peak", "% DRAM",
        ])
        .right_align(&[2, 3, 4, 5, 6, 7]);
        for r in &report.results {
            t.row(vec![
                r.kernel.clone(),
                r.shape.clone(),
                r.stride.to_string(),
                format!("{:.3}", r.ms),
                format!("{:.1}", r.gflops),
                format!("{:.1}", r.gbps),
                format!("{:.0}", 100.0 * r.gflops / m.peak_gflops),
                format!("{:.0}", 100.0 * r.gbps / m.copy_gbps),
            ]);
        }
        print!("{}", t.render());
        println!(
            "threads: {}, batch: {}; machine: {:.0} GFLOP/s f32 FMA peak ({}), \
             copy {:.1} GB/s (128 MiB) and {:.1} GB/s (8 MiB, in cache)",
            report.threads, report.batch, m.peak_gflops, m.isa, m.copy_gbps, m.copy_8mib_gbps
        );
    }
    Ok(ExitCode::SUCCESS)
}
