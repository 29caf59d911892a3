//! Reading what a job's program prints, and its time limit: shared by the `exec` and
//! `docker` kinds.

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The longest output line kept; the rest of a longer line is dropped, so one runaway line
/// cannot flood the coordinator.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// Reads one line into `buf` (cleared first), keeping at most `max` bytes of it and
/// discarding the rest up to the newline: a program that prints gigabytes without a newline
/// costs `max` bytes of memory, not gigabytes. Returns the bytes consumed (0 at the end).
pub(crate) async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize> {
    buf.clear();
    let mut consumed = 0;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(consumed);
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let n = chunk.len();
        reader.consume(n);
        consumed += n;
        if done {
            return Ok(consumed);
        }
    }
}

/// Sleeps for `d`, or forever when there is no limit.
pub(crate) async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod line_tests {
    use super::read_line_bounded;

    #[tokio::test]
    async fn a_line_without_end_costs_the_limit_not_its_length() {
        let mut input = vec![b'x'; 8 * 1024 * 1024];
        input.extend_from_slice(b"\nok\r\nlast");
        let mut reader = tokio::io::BufReader::with_capacity(4096, input.as_slice());
        let mut buf = Vec::new();
        let n = read_line_bounded(&mut reader, &mut buf, 1024)
            .await
            .expect("read");
        assert_eq!(n, 8 * 1024 * 1024 + 1);
        assert_eq!(buf.len(), 1024);
        assert!(buf.capacity() < 64 * 1024, "{}", buf.capacity());
        read_line_bounded(&mut reader, &mut buf, 1024)
            .await
            .expect("read");
        assert_eq!(buf, b"ok\r\n");
        read_line_bounded(&mut reader, &mut buf, 1024)
            .await
            .expect("read");
        assert_eq!(buf, b"last");
        assert_eq!(
            read_line_bounded(&mut reader, &mut buf, 1024)
                .await
                .expect("eof"),
            0
        );
    }
}
