//! TensorBoard event files: `events.out.tfevents.<unix secs>.<hostname>`, a
//! TFRecord stream of `tensorflow.Event` protos. The first event carries
//! `file_version = "brain.Event:2"`; scalars follow as `Summary.Value`s
//! with a tag and a `simple_value`, each event stamped with its wall time
//! and global step. TensorBoard (`tensorboard --logdir RUN_DIR`) and
//! `tf.compat.v1.train.summary_iterator` read them.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use psflow_proto::tensorflow::{event, session_log, summary, Event, SessionLog, Summary};
use psflow_proto::Message;

use super::error::{IoContext, Result, RunError};
use super::tfrecord::{RecordReader, RecordWriter};

/// The version string of the first event, as TensorFlow 1 and 2 write it.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Writes one event file in a directory. Events are buffered; [`flush`]
/// pushes them to the OS (TensorBoard then sees them) and dropping the
/// writer flushes too.
///
/// [`flush`]: EventWriter::flush
pub struct EventWriter {
    path: PathBuf,
    records: RecordWriter<BufWriter<File>>,
}

impl EventWriter {
    /// Creates `dir` if needed and a new event file in it, named
    /// `events.out.tfevents.<unix secs>.<hostname>` (with `.1`, `.2`, …
    /// appended if that name is taken), and writes the file-version event.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).at(dir)?;
        let now = wall_time();
        let base = format!("events.out.tfevents.{}.{}", now as u64, hostname());
        let (path, file) = create_new_numbered(dir, &base)?;
        let mut writer = EventWriter {
            path,
            records: RecordWriter::new(BufWriter::new(file)),
        };
        writer.write_event(&Event {
            wall_time: now,
            step: 0,
            what: Some(event::What::FileVersion(FILE_VERSION.to_string())),
            source_metadata: None,
        })?;
        writer.flush()?;
        Ok(writer)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records one scalar (TensorBoard's Scalars tab) at `step`, now.
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: i64) -> Result<()> {
        self.add_scalars(step, &[(tag, value)])
    }

    /// Records several scalars at `step` in one event, stamped now.
    pub fn add_scalars(&mut self, step: i64, scalars: &[(&str, f32)]) -> Result<()> {
        self.add_scalars_at(step, wall_time(), scalars)
    }

    /// As [`add_scalars`](Self::add_scalars) with an explicit wall time
    /// (seconds since the Unix epoch).
    pub fn add_scalars_at(
        &mut self,
        step: i64,
        wall_time: f64,
        scalars: &[(&str, f32)],
    ) -> Result<()> {
        if let Some((tag, _)) = scalars.iter().find(|(t, _)| t.is_empty()) {
            return Err(RunError::invalid(format!(
                "event file {}: empty scalar tag {tag:?}",
                self.path.display()
            )));
        }
        let value = scalars
            .iter()
            .map(|&(tag, v)| summary::Value {
                tag: tag.to_string(),
                value: Some(summary::value::Value::SimpleValue(v)),
                ..Default::default()
            })
            .collect();
        self.write_event(&Event {
            wall_time,
            step,
            what: Some(event::What::Summary(Summary { value })),
            source_metadata: None,
        })
    }

    /// Marks a (re)start of training at `step`. TensorBoard then drops the
    /// events of earlier files with a larger step, so a resumed run does
    /// not show the abandoned tail of the interrupted one twice.
    pub fn add_session_start(&mut self, step: i64) -> Result<()> {
        self.write_event(&Event {
            wall_time: wall_time(),
            step,
            what: Some(event::What::SessionLog(SessionLog {
                status: session_log::SessionStatus::Start as i32,
                ..Default::default()
            })),
            source_metadata: None,
        })
    }

    /// Appends any event.
    pub fn write_event(&mut self, event: &Event) -> Result<()> {
        self.records
            .write_record(&event.encode_to_vec())
            .at(&self.path)
    }

    /// Hands buffered events to the OS, where readers see them.
    pub fn flush(&mut self) -> Result<()> {
        self.records.flush().at(&self.path)
    }

    /// Flushes and fsyncs: the events survive a machine crash.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.records.get_ref().get_ref().sync_data().at(&self.path)
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        // Errors cannot surface from drop; call `flush` to see them.
        let _ = self.records.flush();
    }
}

/// Every event of an event file, CRCs checked and protos decoded.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let file = File::open(path).at(path)?;
    let mut reader = RecordReader::new(BufReader::new(file), path);
    let mut events = Vec::new();
    loop {
        let offset = reader.offset();
        let Some(record) = reader.read_record()? else {
            break;
        };
        let event = Event::decode(record.as_slice()).map_err(|e| {
            RunError::corrupt(
                path,
                format!("record at byte offset {offset}: not an Event: {e}"),
            )
        })?;
        events.push(event);
    }
    Ok(events)
}

/// The scalars of `events` as `(tag, step, value)`, in file order.
pub fn scalars(events: &[Event]) -> Vec<(String, i64, f32)> {
    let mut out = Vec::new();
    for e in events {
        if let Some(event::What::Summary(s)) = &e.what {
            for v in &s.value {
                if let Some(summary::value::Value::SimpleValue(x)) = v.value {
                    out.push((v.tag.clone(), e.step, x));
                }
            }
        }
    }
    out
}

/// Event files in `dir` (names containing "tfevents"), sorted by name,
/// which is by creation time.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        if entry.file_name().to_string_lossy().contains("tfevents") {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

fn create_new_numbered(dir: &Path, base: &str) -> Result<(PathBuf, File)> {
    for n in 0.. {
        let name = if n == 0 {
            base.to_string()
        } else {
            format!("{base}.{n}")
        };
        let path = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(RunError::io(&path, e)),
        }
    }
    unreachable!("some file name is free")
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// This machine's name as TensorFlow puts it in event file names; only
/// characters safe in a file name are kept.
pub fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}
