//! TensorBoard event files (`events.out.tfevents.*`): TFRecord framing with masked CRC-32C
//! around hand-encoded `Event { wall_time, step, summary { value { tag, simple_value } } }`
//! protos — a few dozen lines instead of a protobuf toolchain in the training daemon.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{CtrError, Result};

pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// Opens a new event file in `dir` (one per training run, as TensorBoard expects).
    pub fn open(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).map_err(CtrError::io(dir))?;
        let now = wall_time();
        let path = dir.join(format!(
            "events.out.tfevents.{}.ferry.{}",
            now as u64,
            std::process::id()
        ));
        let file = File::create(&path).map_err(CtrError::io(&path))?;
        let mut w = EventWriter { path, file };
        let mut event = Vec::new();
        put_double(&mut event, 1, now);
        put_bytes(&mut event, 3, b"brain.Event:2");
        w.record(&event)?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn scalar(&mut self, tag: &str, step: usize, value: f64) -> Result<()> {
        let mut v = Vec::new();
        put_bytes(&mut v, 1, tag.as_bytes());
        v.push((2 << 3) | 5); // simple_value: float, fixed32
        v.extend_from_slice(&(value as f32).to_le_bytes());
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, &v);
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        event.push(2 << 3); // step: varint
        put_varint(&mut event, step as u64);
        put_bytes(&mut event, 5, &summary);
        self.record(&event)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut buf = Vec::with_capacity(data.len() + 16);
        buf.extend_from_slice(&len);
        buf.extend_from_slice(&masked_crc(&len).to_le_bytes());
        buf.extend_from_slice(data);
        buf.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file
            .write_all(&buf)
            .map_err(CtrError::io(&self.path))?;
        self.file.flush().map_err(CtrError::io(&self.path))
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_bytes(buf: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    buf.push((field << 3) | 2);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

fn put_double(buf: &mut Vec<u8>, field: u8, v: f64) {
    buf.push((field << 3) | 1);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// CRC-32C (Castagnoli), bitwise: event files are tiny.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xA282_EAD8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn event_file_is_framed_records() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = EventWriter::open(dir.path()).expect("open");
        w.scalar("valid/click/AUC", 1, 0.8).expect("scalar");
        let bytes = std::fs::read(w.path()).expect("read");
        // Walk the records: each length's and data's CRCs must check out.
        let mut at = 0;
        let mut records = 0;
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8")) as usize;
            let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4"));
            assert_eq!(len_crc, masked_crc(&bytes[at..at + 8]));
            let data = &bytes[at + 12..at + 12 + len];
            let crc =
                u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().expect("4"));
            assert_eq!(crc, masked_crc(data));
            at += 16 + len;
            records += 1;
        }
        assert_eq!(records, 2);
        assert!(bytes.windows(15).any(|w| w == b"valid/click/AUC"));
    }
}
