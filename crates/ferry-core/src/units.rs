//! How durations are written in logs and reports.

use std::time::Duration;

/// `1h52m30s`, `9m29s`, `3.2s`, `12ms`: how the seed's log examples print durations.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!(
            "{}h{:02}m{:02}s",
            secs / 3600,
            (secs % 3600) / 60,
            secs % 60
        )
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if secs >= 1 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_in_the_seed() {
        assert_eq!(format_duration(Duration::from_secs(6750)), "1h52m30s");
        assert_eq!(format_duration(Duration::from_secs(569)), "9m29s");
        assert_eq!(format_duration(Duration::from_millis(3200)), "3.2s");
        assert_eq!(format_duration(Duration::from_millis(12)), "12ms");
    }
}
