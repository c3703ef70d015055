//! TFRecord framing, the container of TensorBoard event files (and of
//! TensorFlow's `.tfrecord` datasets). Each record is
//!
//! ```text
//! u64 length (little-endian)
//! u32 masked_crc32c(length bytes)
//! [u8; length] data
//! u32 masked_crc32c(data)
//! ```
//!
//! with the mask of [`crc32c::mask`](super::crc32c::mask).

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use super::crc32c::{crc32c, mask};
use super::error::{IoContext, Result, RunError};

/// Bytes of framing around each record: length, its CRC, the data CRC.
pub const RECORD_OVERHEAD: usize = 8 + 4 + 4;

/// Appends framed records to a writer.
pub struct RecordWriter<W: Write> {
    inner: W,
}

impl<W: Write> RecordWriter<W> {
    pub fn new(inner: W) -> Self {
        RecordWriter { inner }
    }

    /// Writes one record (header, data, footer) in a single `write_all`
    /// per part; the caller flushes.
    pub fn write_record(&mut self, data: &[u8]) -> io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut header = [0u8; 12];
        header[..8].copy_from_slice(&len);
        header[8..].copy_from_slice(&mask(crc32c(&len)).to_le_bytes());
        self.inner.write_all(&header)?;
        self.inner.write_all(data)?;
        self.inner.write_all(&mask(crc32c(data)).to_le_bytes())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// Reads framed records, checking both CRCs of each. `path` only labels
/// errors (the reader may be any `Read`).
pub struct RecordReader<R: Read> {
    inner: R,
    path: PathBuf,
    offset: u64,
}

impl<R: Read> RecordReader<R> {
    pub fn new(inner: R, path: impl Into<PathBuf>) -> Self {
        RecordReader {
            inner,
            path: path.into(),
            offset: 0,
        }
    }

    /// Byte offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record, `None` at a clean end of input; a record cut short
    /// or failing a CRC is a [`RunError::Corrupt`] naming its offset.
    pub fn read_record(&mut self) -> Result<Option<Vec<u8>>> {
        let start = self.offset;
        let mut header = [0u8; 12];
        match read_full(&mut self.inner, &mut header).at(&self.path)? {
            0 => return Ok(None),
            12 => {}
            n => {
                return Err(self.corrupt(start, format!("truncated header ({n} of 12 bytes)")));
            }
        }
        let len_bytes: [u8; 8] = header[..8].try_into().expect("8 bytes");
        let stored = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
        if mask(crc32c(&len_bytes)) != stored {
            return Err(self.corrupt(start, "length CRC mismatch"));
        }
        let len = u64::from_le_bytes(len_bytes);
        // Read through `take` so that a corrupt huge length cannot make us
        // allocate more than the input holds.
        let mut data = Vec::new();
        let got = (&mut self.inner)
            .take(len)
            .read_to_end(&mut data)
            .at(&self.path)?;
        if got as u64 != len {
            return Err(self.corrupt(start, format!("truncated data ({got} of {len} bytes)")));
        }
        let mut footer = [0u8; 4];
        let n = read_full(&mut self.inner, &mut footer).at(&self.path)?;
        if n != 4 {
            return Err(self.corrupt(start, "truncated data CRC"));
        }
        if mask(crc32c(&data)) != u32::from_le_bytes(footer) {
            return Err(self.corrupt(start, "data CRC mismatch"));
        }
        self.offset = start + RECORD_OVERHEAD as u64 + len;
        Ok(Some(data))
    }

    fn corrupt(&self, offset: u64, what: impl std::fmt::Display) -> RunError {
        RunError::corrupt(
            &self.path,
            format!("record at byte offset {offset}: {what}"),
        )
    }
}

impl<R: Read> Iterator for RecordReader<R> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.read_record().transpose()
    }
}

/// Every record of a TFRecord file, CRCs checked.
pub fn read_records(path: &Path) -> Result<Vec<Vec<u8>>> {
    let file = File::open(path).at(path)?;
    RecordReader::new(BufReader::new(file), path).collect()
}

/// Fills `buf` as far as the input allows; returns how many bytes came.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(records: &[&[u8]]) -> Vec<u8> {
        let mut w = RecordWriter::new(Vec::new());
        for r in records {
            w.write_record(r).unwrap();
        }
        w.into_inner()
    }

    #[test]
    fn round_trip_including_empty_records() {
        let bytes = framed(&[b"hello", b"", &[7u8; 1000]]);
        assert_eq!(bytes.len(), 3 * RECORD_OVERHEAD + 5 + 1000);
        let got: Vec<Vec<u8>> = RecordReader::new(&bytes[..], "mem")
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(got, vec![b"hello".to_vec(), vec![], vec![7u8; 1000]]);
    }

    #[test]
    fn empty_record_matches_tensorflow_bytes() {
        // An empty record: length 0, masked CRC of eight zero bytes, no
        // data, masked CRC of nothing (mask(0) = 0xa282ead8).
        let bytes = framed(&[b""]);
        assert_eq!(&bytes[..8], &[0u8; 8]);
        assert_eq!(&bytes[12..], &0xa282_ead8u32.to_le_bytes());
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_caught() {
        let bytes = framed(&[b"abcdefgh", b"xyz"]);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let r: Result<Vec<_>> = RecordReader::new(&bad[..], "f").collect();
            assert!(matches!(r, Err(RunError::Corrupt { .. })), "flip at {i}");
        }
        let first = RECORD_OVERHEAD + 8;
        for cut in 1..bytes.len() {
            let r: Result<Vec<_>> = RecordReader::new(&bytes[..cut], "f").collect();
            if cut == first {
                assert_eq!(r.unwrap().len(), 1);
            } else {
                let e = r.unwrap_err().to_string();
                assert!(e.starts_with("f: corrupt: record at byte offset"), "{e}");
            }
        }
    }
}
