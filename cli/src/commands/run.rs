//! `psflow run`: execute a GraphDef once on `.npy` feeds and write the
//! fetches as `.npy` files.
//!
//! Nothing is written unless the whole run succeeded: outputs go to hidden
//! temporary files in the output directory, are synced, and are renamed
//! into place only once every fetch has been computed and written.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use psflow_graph::{format::npy, Graph, Session, Tensor, TensorName};
use serde::Serialize;

use crate::table::Table;

pub struct Args {
    pub graph: PathBuf,
    /// `NAME=FILE.npy` pairs as given.
    pub feeds: Vec<String>,
    pub fetches: Vec<String>,
    /// Nodes run first, one run each, in order.
    pub inits: Vec<String>,
    /// Nodes run with the fetches.
    pub targets: Vec<String>,
    pub out_dir: PathBuf,
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct FetchReport {
    pub name: String,
    pub file: PathBuf,
    pub shape: Vec<usize>,
    pub dtype: String,
}

#[derive(Debug, Serialize)]
pub struct RunReport {
    pub graph: PathBuf,
    pub fetches: Vec<FetchReport>,
    /// Seconds spent running the graph (not loading or writing).
    pub run_seconds: f64,
    /// Seconds of the whole command: load, run and write.
    pub wall_seconds: f64,
}

/// The file name a fetch is written to: every `/` and `:` becomes `_`.
pub fn output_file_name(fetch: &str) -> String {
    let mut name: String = fetch
        .chars()
        .map(|c| if c == '/' || c == ':' { '_' } else { c })
        .collect();
    name.push_str(".npy");
    name
}

fn parse_feed(spec: &str) -> Result<(TensorName, PathBuf)> {
    let Some((name, file)) = spec.split_once('=') else {
        bail!("--feed {spec:?}: expected NAME=FILE.npy");
    };
    if name.is_empty() || file.is_empty() {
        bail!("--feed {spec:?}: expected NAME=FILE.npy");
    }
    let tensor = TensorName::parse(name).with_context(|| format!("--feed {spec:?}"))?;
    Ok((tensor, PathBuf::from(file)))
}

/// Runs the command; errors are the user's to fix (exit code 2).
pub fn execute(args: &Args) -> Result<RunReport> {
    let start = Instant::now();
    if args.fetches.is_empty() {
        bail!("nothing to fetch: give at least one --fetch NAME");
    }
    // Parse everything the user gave before any work.
    let feeds_spec: Vec<(TensorName, PathBuf)> = args
        .feeds
        .iter()
        .map(|s| parse_feed(s))
        .collect::<Result<_>>()?;
    let fetches: Vec<TensorName> = args
        .fetches
        .iter()
        .map(|f| TensorName::parse(f).with_context(|| format!("--fetch {f:?}")))
        .collect::<Result<_>>()?;
    let mut files: HashMap<String, &str> = HashMap::new();
    for f in &args.fetches {
        let file = output_file_name(f);
        if let Some(other) = files.insert(file.clone(), f) {
            bail!("--fetch {other:?} and --fetch {f:?} would both be written to {file}");
        }
    }
    if args.out_dir.exists() && !args.out_dir.is_dir() {
        bail!(
            "--out-dir {}: exists and is not a directory",
            args.out_dir.display()
        );
    }

    let graph = Graph::load(&args.graph)?;
    for (flag, names) in [("--init", &args.inits), ("--target", &args.targets)] {
        if let Some(n) = names.iter().find(|n| graph.node(n).is_none()) {
            bail!(
                "{flag} {n:?}: no such node in {} (give a node name, not a tensor)",
                args.graph.display()
            );
        }
    }
    let session = Session::new(graph)?;
    for init in &args.inits {
        session
            .run(&[], &[], std::slice::from_ref(init))
            .with_context(|| format!("running --init {init}"))?;
    }
    let mut feeds = Vec::with_capacity(feeds_spec.len());
    for (name, path) in feeds_spec {
        let t = npy::read(&path).with_context(|| format!("feed {name}"))?;
        feeds.push((name, t));
    }

    let t0 = Instant::now();
    let outputs = session.run(&feeds, &fetches, &args.targets)?;
    let run_seconds = t0.elapsed().as_secs_f64();

    let reports = write_all(&args.out_dir, &args.fetches, &outputs)?;
    Ok(RunReport {
        graph: args.graph.clone(),
        fetches: reports,
        run_seconds,
        wall_seconds: start.elapsed().as_secs_f64(),
    })
}

/// Writes every output to a temporary file, then renames them all; on any
/// failure removes what it wrote.
fn write_all(dir: &Path, names: &[String], outputs: &[Tensor]) -> Result<Vec<FetchReport>> {
    fs::create_dir_all(dir).with_context(|| format!("creating --out-dir {}", dir.display()))?;
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = (|| -> Result<Vec<FetchReport>> {
        let mut reports = Vec::new();
        for (name, t) in names.iter().zip(outputs) {
            let file = dir.join(output_file_name(name));
            let tmp = dir.join(format!(
                ".{}.tmp-{}",
                output_file_name(name),
                std::process::id()
            ));
            let mut f =
                fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
            staged.push((tmp.clone(), file.clone()));
            f.write_all(&npy::to_bytes(t))
                .and_then(|_| f.sync_all())
                .with_context(|| format!("writing {}", tmp.display()))?;
            reports.push(FetchReport {
                name: name.clone(),
                file,
                shape: t.shape().to_vec(),
                dtype: t.dtype().name().to_string(),
            });
        }
        for (tmp, file) in &staged {
            fs::rename(tmp, file).with_context(|| format!("renaming into {}", file.display()))?;
        }
        Ok(reports)
    })();
    if result.is_err() {
        for (tmp, _) in &staged {
            let _ = fs::remove_file(tmp);
        }
    }
    result
}

pub fn print_table(r: &RunReport) {
    let mut t = Table::new(&["fetch", "shape", "dtype", "file"]);
    for f in &r.fetches {
        t.row(vec![
            f.name.clone(),
            format!("{:?}", f.shape),
            f.dtype.clone(),
            f.file.display().to_string(),
        ]);
    }
    print!("{}", t.render());
    println!(
        "ran in {:.3} s ({:.3} s in all)",
        r.run_seconds, r.wall_seconds
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_replace_slashes_and_colons() {
        assert_eq!(output_file_name("y"), "y.npy");
        assert_eq!(output_file_name("dense/BiasAdd:0"), "dense_BiasAdd_0.npy");
    }

    #[test]
    fn feed_specs_need_name_and_file() {
        assert!(parse_feed("x=a.npy").is_ok());
        assert!(parse_feed("x").is_err());
        assert!(parse_feed("=a.npy").is_err());
        assert!(parse_feed("x=").is_err());
    }
}
