//! Schedules' pure model: a cron expression evaluated in an IANA time zone ([`Cadence`]), the
//! runs it produces ([`LogicalRun`]) and their date placeholders, and the planning the
//! coordinator does with them: which runs to create after a pause ([`due_runs`], by
//! [`CatchUp`] policy), which runs a backfill covers ([`backfill_runs`]), and what to do when a
//! run's predecessor still runs ([`decide`]). No IO and no clock reads: "now" is always an
//! argument.
//!
//! Runs follow Airflow's data-interval semantics. A run covers `[logical_date, interval_end)`,
//! where `logical_date` is a tick of the cron expression and `interval_end` the tick after it,
//! and becomes due at `interval_end`: the run of a daily `0 0 * * *` with logical date
//! 2026-01-22 processes that day's data and is due at 2026-01-23T00:00.
//!
//! A tick is an instant the expression names on the wall clock of the schedule's time zone, to
//! the second. Around daylight-saving changes: an expression with fixed times (`30 2 * * *`)
//! whose time falls in a spring-forward gap fires at the first instant after the gap; one with
//! wildcards or steps in its time fields (`*/15 * * * *`) has no tick in the gap. When a
//! fall-back repeats an hour, a fixed-time expression fires once, at the first of the two
//! instants, and the others fire on both passes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::state::{TaskStatus, UnknownValue};

/// The most ticks [`due_runs`] walks forward from its `after` in one call. A longer backlog
/// (a `* * * * *` schedule after a week of downtime) is not walked: the call takes the newest
/// runs, counting back from `now`, and the older ones are skipped without being counted.
pub const SCAN_LIMIT: usize = 10_000;

/// The most logical dates [`Due::skipped`] lists; [`Due::skipped_count`] counts them all.
pub const SKIPPED_LISTED: usize = 100;

/// The largest `max_catchup` a schedule may have (see [`check_max_catchup`]).
pub const MAX_CATCHUP_LIMIT: u32 = 1_000;

/// The names [`LogicalRun::placeholders`] fills in.
pub const PLACEHOLDER_NAMES: &[&str] = &[
    "ds",
    "ds_nodash",
    "prev_ds",
    "next_ds",
    "logical_date",
    "data_interval_start",
    "data_interval_end",
];

const CRON_HELP: &str = "write 5 fields, minute hour day-of-month month day-of-week (`0 2 * * *` \
     is 02:00 every day), or 6 with seconds first";

const TIMEZONE_HELP: &str = "an IANA name such as `Asia/Shanghai` or `UTC`";

/// A schedule field that is wrong, or a request about a schedule that cannot be met.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression is empty or blank.
    #[error("cron: must not be empty; {}", CRON_HELP)]
    EmptyCron,
    /// The cron expression is malformed, or never fires.
    #[error(
        "cron: `{expr}` is not a valid cron expression: {reason}; {}",
        CRON_HELP
    )]
    BadCron { expr: String, reason: String },
    /// The time zone is empty.
    #[error("timezone: must not be empty; write {}", TIMEZONE_HELP)]
    EmptyTimezone,
    /// The time zone is not an IANA name.
    #[error("timezone: unknown time zone `{name}` ({})", TIMEZONE_HELP)]
    UnknownTimezone { name: String },
    /// `max_catchup` is 0 or above [`MAX_CATCHUP_LIMIT`].
    #[error("max_catchup: must be from 1 to {}, not {value}", MAX_CATCHUP_LIMIT)]
    MaxCatchup { value: u32 },
    /// A logical date that the cadence does not name.
    #[error("logical_date: {} is not a tick of {cadence}", .logical_date.to_rfc3339())]
    NotATick {
        logical_date: DateTime<Utc>,
        cadence: String,
    },
    /// A logical date with no tick after it, so its interval never ends.
    #[error("logical_date: {cadence} has no tick after {}", .logical_date.to_rfc3339())]
    NoTickAfter {
        logical_date: DateTime<Utc>,
        cadence: String,
    },
    /// A backfill range whose end comes before its start.
    #[error("end: {end} is before start {start}")]
    ReversedRange { start: NaiveDate, end: NaiveDate },
    /// A backfill range with no run in it.
    #[error("start: no run of {cadence} falls on a date from {start} to {end}; the range is empty")]
    EmptyRange {
        start: NaiveDate,
        end: NaiveDate,
        cadence: String,
    },
    /// A backfill range with more runs than the caller's limit.
    #[error(
        "end: the dates from {start} to {end} hold more than {limit} runs of {cadence}; \
         narrow the range"
    )]
    TooManyRuns {
        start: NaiveDate,
        end: NaiveDate,
        limit: usize,
        cadence: String,
    },
    /// A backfill date too far in the past or the future to compute with.
    #[error("{field}: {date} is outside the dates a schedule can handle")]
    DateOutOfRange {
        field: &'static str,
        date: NaiveDate,
    },
}

impl ScheduleError {
    /// The request field at fault, as the HTTP API reports it in `error.field`.
    pub fn field(&self) -> &'static str {
        match self {
            ScheduleError::EmptyCron | ScheduleError::BadCron { .. } => "cron",
            ScheduleError::EmptyTimezone | ScheduleError::UnknownTimezone { .. } => "timezone",
            ScheduleError::MaxCatchup { .. } => "max_catchup",
            ScheduleError::NotATick { .. } | ScheduleError::NoTickAfter { .. } => "logical_date",
            ScheduleError::EmptyRange { .. } => "start",
            ScheduleError::ReversedRange { .. } | ScheduleError::TooManyRuns { .. } => "end",
            ScheduleError::DateOutOfRange { field, .. } => field,
        }
    }
}

/// Declares a policy enum with `as_str`, `Display`, `FromStr`, serde as its lowercase names
/// and a list of all values.
macro_rules! policy_enum {
    ($(#[$meta:meta])* $name:ident ($what:literal) {
        $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value's name, as written in definitions and requests.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue {
                        what: $what,
                        value: s.to_owned(),
                        expected: vec![$($text),+],
                    }),
                }
            }
        }
    };
}

policy_enum! {
    /// What happens to runs that came due while the coordinator was not running (or not
    /// looking), as [`due_runs`] applies it. A due run is on time when it came due at most a
    /// grace period ago, and missed otherwise.
    CatchUp ("catch-up policy") {
        /// Only on-time runs are created; every missed run is skipped.
        None => "none",
        /// Only the most recent due run is created, on time or not; older ones are skipped.
        Latest => "latest",
        /// Every due run is created, oldest first, up to `max_catchup` of them: the most recent
        /// ones, the older ones are skipped.
        All => "all",
    }
}

/// [`CatchUp::Latest`], as Airflow's `catchup=False`.
impl Default for CatchUp {
    fn default() -> Self {
        CatchUp::Latest
    }
}

policy_enum! {
    /// What a schedule does with a run that comes due while its previous run still runs; the
    /// rule is [`decide`].
    Concurrency ("concurrency policy") {
        /// The new run starts alongside the previous one.
        Allow => "allow",
        /// The new run does not start at all.
        Skip => "skip",
        /// The new run waits until the previous one has ended; runs start in order.
        Queue => "queue",
        /// The previous run is cancelled and the new one starts.
        Replace => "replace",
    }
}

/// [`Concurrency::Queue`]: no run is lost and no two runs overlap.
impl Default for Concurrency {
    fn default() -> Self {
        Concurrency::Queue
    }
}

/// What the coordinator does with a run that came due, per [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Start the run now.
    Start,
    /// Do not start the run; it is dropped, not deferred.
    Skip,
    /// Hold the run and decide again when the previous run has ended.
    Wait,
    /// Cancel the previous run, then start this one.
    StartAfterCancellingPrevious,
}

/// What to do with a run that came due under `policy`, given whether the schedule's previous
/// run still runs. With no previous run running, every policy starts the run.
pub fn decide(policy: Concurrency, previous_running: bool) -> Decision {
    if !previous_running {
        return Decision::Start;
    }
    match policy {
        Concurrency::Allow => Decision::Start,
        Concurrency::Skip => Decision::Skip,
        Concurrency::Queue => Decision::Wait,
        Concurrency::Replace => Decision::StartAfterCancellingPrevious,
    }
}

policy_enum! {
    /// Which dates of a backfill's range get a run, given the run each date already has.
    Reprocess ("reprocess policy") {
        /// Only dates with no run yet.
        Missing => "missing",
        /// Dates with no run yet, and dates whose run failed or was cancelled.
        Failed => "failed",
        /// Every date, whatever run it already has.
        All => "all",
    }
}

/// [`Reprocess::Missing`]: a backfill never runs a date twice unless asked to.
impl Default for Reprocess {
    fn default() -> Self {
        Reprocess::Missing
    }
}

impl Reprocess {
    /// Whether a date whose latest run is in state `previous` (`None`: the date has no run)
    /// gets a run in a backfill under this policy.
    pub fn includes(self, previous: Option<TaskStatus>) -> bool {
        match self {
            Reprocess::Missing => previous.is_none(),
            Reprocess::Failed => matches!(
                previous,
                None | Some(TaskStatus::Failed) | Some(TaskStatus::Cancelled)
            ),
            Reprocess::All => true,
        }
    }
}

/// Checks a schedule's `max_catchup`: from 1 to [`MAX_CATCHUP_LIMIT`].
pub fn check_max_catchup(value: u32) -> Result<u32, ScheduleError> {
    if (1..=MAX_CATCHUP_LIMIT).contains(&value) {
        Ok(value)
    } else {
        Err(ScheduleError::MaxCatchup { value })
    }
}

/// A compiled cron expression and the IANA time zone whose wall clock it is read on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cadence {
    expr: String,
    cron: Cron,
    tz: Tz,
}

/// Whole seconds of `t`: ticks never have a fraction.
fn floor_second(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(0).unwrap_or(t)
}

/// A user's words for what croner found wrong in an expression.
fn cron_reason(e: CronError) -> String {
    match e {
        CronError::EmptyPattern => "it is empty".to_owned(),
        CronError::InvalidPattern(m)
        | CronError::IllegalCharacters(m)
        | CronError::ComponentError(m) => m.trim_end_matches('.').to_owned(),
        CronError::InvalidDate | CronError::InvalidTime | CronError::TimeSearchLimitExceeded => {
            "it names no date that exists".to_owned()
        }
    }
}

/// The fields of a 5-field expression: name, lowest value, highest value.
const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
];

/// The nicknames croner expands.
const NICKNAMES: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

/// The first number of `expr` out of its field's range, in words; `None` when there is none.
/// Steps (`*/5`) and nth weekdays (`MON#2`) are not range values and are not checked.
fn out_of_range(expr: &str) -> Option<String> {
    let parts: Vec<&str> = expr.split_whitespace().collect();
    let seconds = [("second", 0, 59)];
    let fields = match parts.len() {
        6 => seconds.iter().chain(FIELDS.iter()),
        _ => [].iter().chain(FIELDS.iter()),
    };
    for (part, &(name, lo, hi)) in parts.iter().zip(fields) {
        for item in part.split(',') {
            let range = item.split(['/', '#']).next().unwrap_or_default();
            for number in range
                .split('-')
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                let value = number.parse::<u32>().ok();
                if !number.is_empty() && value.is_none_or(|v| v < lo || v > hi) {
                    return Some(format!(
                        "{number} is out of range for the {name} field ({lo} to {hi})"
                    ));
                }
            }
        }
    }
    None
}

impl Cadence {
    /// Compiles `cron` (5 fields, minute hour day-of-month month day-of-week, or 6 with seconds
    /// first; names such as `MON` or `JAN` and the nicknames `@hourly`, `@daily`, `@weekly`,
    /// `@monthly`, `@yearly` and `@annually` are accepted) to be read in the IANA time zone
    /// `timezone`.
    /// Refuses an empty expression, a malformed one, one that never fires (`0 0 30 2 *`) and
    /// an unknown zone; the error names the field.
    pub fn new(cron: &str, timezone: &str) -> Result<Cadence, ScheduleError> {
        let expr = cron.trim();
        if expr.is_empty() {
            return Err(ScheduleError::EmptyCron);
        }
        let bad = |reason: String| ScheduleError::BadCron {
            expr: expr.to_owned(),
            reason,
        };
        if expr.starts_with('@') {
            if !NICKNAMES.iter().any(|n| n.eq_ignore_ascii_case(expr)) {
                return Err(bad(format!(
                    "unknown nickname (known: {})",
                    NICKNAMES.join(", ")
                )));
            }
        } else {
            let fields = expr.split_whitespace().count();
            if !(5..=6).contains(&fields) {
                return Err(bad(format!("it has {fields} fields")));
            }
        }
        let parsed = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| bad(out_of_range(expr).unwrap_or_else(|| cron_reason(e))))?;
        if timezone.is_empty() {
            return Err(ScheduleError::EmptyTimezone);
        }
        let tz = Tz::from_str(timezone).map_err(|_| ScheduleError::UnknownTimezone {
            name: timezone.to_owned(),
        })?;
        let cadence = Cadence {
            expr: expr.to_owned(),
            cron: parsed,
            tz,
        };
        // With no year field every expression repeats within 400 years; one that has no tick
        // after a fixed instant has none at all.
        let reference = DateTime::<Utc>::UNIX_EPOCH;
        if cadence.next_after(reference).is_none() {
            return Err(bad(
                "it never fires (no month has the day it names)".to_owned()
            ));
        }
        Ok(cadence)
    }

    /// The cron expression, as given (without surrounding blanks).
    pub fn cron(&self) -> &str {
        &self.expr
    }

    /// The IANA name of the time zone.
    pub fn timezone(&self) -> &'static str {
        self.tz.name()
    }

    /// The calendar date of `t` in the schedule's time zone.
    pub fn local_date(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.tz).date_naive()
    }

    /// The first tick strictly after `t`; `None` when there is none (past the year 9999, or a
    /// search croner gives up on).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let from = floor_second(t).with_timezone(&self.tz);
        let next = self
            .cron
            .find_next_occurrence(&from, false)
            .ok()?
            .with_timezone(&Utc);
        // Guards the callers' loops: every step moves forward.
        (next > t).then_some(next)
    }

    /// The first tick at or after `t`.
    pub fn next_at_or_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if t.nanosecond() == 0 {
            self.next_after(t.checked_sub_signed(TimeDelta::seconds(1))?)
        } else {
            self.next_after(t)
        }
    }

    /// The last tick strictly before `t`: the tick whose [`next_after`](Self::next_after) is
    /// at or after `t`.
    pub fn prev_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Croner's backward search can land on the second pass of a repeated wall clock time,
        // which its forward search (what defines ticks here) skips for fixed-time expressions:
        // each candidate is settled with the forward search.
        let mut probe = t;
        for _ in 0..4 {
            let floor = floor_second(probe);
            let candidate = self
                .cron
                .find_previous_occurrence(&floor.with_timezone(&self.tz), floor < probe)
                .ok()?
                .with_timezone(&Utc);
            if candidate >= probe {
                return None;
            }
            let mut tick = self.next_at_or_after(candidate)?;
            if tick < t {
                for _ in 0..16 {
                    match self.next_after(tick) {
                        Some(next) if next < t => tick = next,
                        _ => break,
                    }
                }
                return Some(tick);
            }
            probe = candidate;
        }
        None
    }

    /// The last tick at or before `t`.
    pub fn prev_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let floor = floor_second(t);
        if self.is_tick(floor) {
            Some(floor)
        } else {
            self.prev_before(floor)
        }
    }

    /// Whether `t` is a tick.
    pub fn is_tick(&self, t: DateTime<Utc>) -> bool {
        t.nanosecond() == 0 && self.next_at_or_after(t) == Some(t)
    }

    /// The run whose logical date is `logical_date`; refuses an instant that is not a tick,
    /// and a tick with no tick after it (whose interval never ends).
    pub fn run_at(&self, logical_date: DateTime<Utc>) -> Result<LogicalRun, ScheduleError> {
        if !self.is_tick(logical_date) {
            return Err(ScheduleError::NotATick {
                logical_date,
                cadence: self.to_string(),
            });
        }
        let interval_end =
            self.next_after(logical_date)
                .ok_or_else(|| ScheduleError::NoTickAfter {
                    logical_date,
                    cadence: self.to_string(),
                })?;
        Ok(self.run(logical_date, interval_end, self.prev_before(logical_date)))
    }

    fn run(
        &self,
        logical_date: DateTime<Utc>,
        interval_end: DateTime<Utc>,
        prev_logical_date: Option<DateTime<Utc>>,
    ) -> LogicalRun {
        LogicalRun {
            logical_date,
            interval_end,
            prev_logical_date,
            tz: self.tz,
        }
    }
}

/// `` `0 2 * * *` in Asia/Shanghai ``.
impl fmt::Display for Cadence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` in {}", self.expr, self.tz.name())
    }
}

/// One run of a schedule: it covers the data interval `[logical_date, interval_end)` and is due
/// at `interval_end`. Made by [`Cadence::run_at`], [`due_runs`] and [`backfill_runs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalRun {
    /// The tick the run is named after: the start of its data interval.
    pub logical_date: DateTime<Utc>,
    /// The tick after `logical_date`: the end of the data interval (excluded), when the run
    /// becomes due.
    pub interval_end: DateTime<Utc>,
    /// The tick before `logical_date`; `None` only when there is none (before the year 1).
    pub prev_logical_date: Option<DateTime<Utc>>,
    tz: Tz,
}

impl LogicalRun {
    /// The IANA name of the time zone the run's dates are rendered in.
    pub fn timezone(&self) -> &'static str {
        self.tz.name()
    }

    /// The run's date placeholders, dates and times in the schedule's time zone:
    ///
    /// - `ds`, `ds_nodash`: the logical date's calendar date, `2026-01-22` and `20260122`;
    /// - `prev_ds`: the calendar date of the tick before the logical date (absent when there
    ///   is none);
    /// - `next_ds`: the calendar date of `interval_end`;
    /// - `logical_date`, `data_interval_start`: the logical date in RFC 3339 with the zone's
    ///   offset, `2026-01-22T00:00:00+08:00`;
    /// - `data_interval_end`: `interval_end`, likewise.
    pub fn placeholders(&self) -> BTreeMap<String, String> {
        let local = |t: DateTime<Utc>| t.with_timezone(&self.tz);
        let date = |t: DateTime<Utc>| local(t).format("%Y-%m-%d").to_string();
        let stamp = |t: DateTime<Utc>| local(t).to_rfc3339_opts(SecondsFormat::Secs, false);
        let mut out = BTreeMap::new();
        out.insert("ds".to_owned(), date(self.logical_date));
        out.insert(
            "ds_nodash".to_owned(),
            local(self.logical_date).format("%Y%m%d").to_string(),
        );
        if let Some(prev) = self.prev_logical_date {
            out.insert("prev_ds".to_owned(), date(prev));
        }
        out.insert("next_ds".to_owned(), date(self.interval_end));
        out.insert("logical_date".to_owned(), stamp(self.logical_date));
        out.insert("data_interval_start".to_owned(), stamp(self.logical_date));
        out.insert("data_interval_end".to_owned(), stamp(self.interval_end));
        out
    }
}

/// What [`due_runs`] decided: runs to create, runs skipped, and where the next call starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Runs to create now, oldest first.
    pub create: Vec<LogicalRun>,
    /// Logical dates of due runs that are not created, oldest first: the newest
    /// [`SKIPPED_LISTED`] of them.
    pub skipped: Vec<DateTime<Utc>>,
    /// How many due runs are not created, listed in `skipped` or not.
    pub skipped_count: u64,
    /// Whether `skipped_count` is exact. It is not when the backlog was longer than
    /// [`SCAN_LIMIT`] runs: the runs between the first `SCAN_LIMIT` and the newest ones were
    /// skipped without being counted, and `skipped_count` is a lower bound.
    pub skipped_count_exact: bool,
    /// The newest logical date decided (created or skipped), to store and pass as the next
    /// call's `after`; `None` when no run was due (keep the stored one).
    pub cursor: Option<DateTime<Utc>>,
}

/// One due run: its logical date and its interval's end.
#[derive(Debug, Clone, Copy)]
struct Slot {
    logical: DateTime<Utc>,
    end: DateTime<Utc>,
}

/// The due runs after `after`, oldest first, with how many older due runs were left out (and
/// whether that count is exact). Walks at most [`SCAN_LIMIT`] runs forward; past that, takes
/// the newest `window` runs walking back from `now`.
fn collect_due(
    cadence: &Cadence,
    after: DateTime<Utc>,
    now: DateTime<Utc>,
    window: usize,
) -> (Vec<Slot>, u64, bool) {
    let mut slots: Vec<Slot> = Vec::new();
    let mut next = cadence.next_after(after);
    let mut overflow = false;
    while let Some(logical) = next {
        let Some(end) = cadence.next_after(logical) else {
            break;
        };
        if end > now {
            break;
        }
        if slots.len() == SCAN_LIMIT {
            overflow = true;
            break;
        }
        slots.push(Slot { logical, end });
        next = Some(end);
    }
    let Some(last) = slots.last().copied().filter(|_| overflow) else {
        return (slots, 0, true);
    };

    // More runs are due than one call walks: take the newest from `now` backwards, down to
    // where the forward walk stopped if they meet.
    let boundary = last.end;
    let mut newest: Vec<Slot> = Vec::new();
    let mut met = false;
    let mut end = cadence.prev_at_or_before(now);
    while let Some(e) = end {
        if newest.len() == window {
            break;
        }
        let Some(logical) = cadence.prev_before(e) else {
            break;
        };
        if logical < boundary {
            met = true;
            break;
        }
        newest.push(Slot { logical, end: e });
        if logical == boundary {
            met = true;
            break;
        }
        end = Some(logical);
    }
    if newest.is_empty() {
        // The backward walk found nothing (it should not): go on from the forward walk's end
        // at the next call.
        return (slots, 0, false);
    }
    newest.reverse();
    if met {
        slots.extend(newest);
        (slots, 0, true)
    } else {
        (newest, slots.len() as u64, false)
    }
}

/// Which runs of `cadence` to create now, under catch-up `policy`.
///
/// The runs considered are those whose logical date is a tick strictly after `after` and that
/// are due (`interval_end <= now`). `after` is the stored cursor (the newest logical date
/// already decided) or, for a schedule that has none yet, its creation time: a schedule created
/// at 10:00 with a daily `0 0 * * *` gets its first run for the interval starting at the next
/// midnight, due one day after that midnight.
///
/// A due run is on time when `now - interval_end <= grace`, else missed. [`CatchUp::None`]
/// creates the on-time runs, [`CatchUp::Latest`] the newest due run, [`CatchUp::All`] every
/// due run; each creates at most `max_catchup` runs (clamped to 1 to [`MAX_CATCHUP_LIMIT`]),
/// the newest ones. Every other due run is skipped. The call is bounded: see [`SCAN_LIMIT`].
pub fn due_runs(
    cadence: &Cadence,
    policy: CatchUp,
    max_catchup: u32,
    after: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: TimeDelta,
) -> Due {
    let keep = max_catchup.clamp(1, MAX_CATCHUP_LIMIT) as usize;
    let grace = grace.max(TimeDelta::zero());
    let (slots, uncounted, exact) = collect_due(cadence, after, now, keep + SKIPPED_LISTED);
    let n = slots.len();
    let first_created = match policy {
        CatchUp::None => {
            let on_time = slots
                .iter()
                .position(|s| now.signed_duration_since(s.end) <= grace)
                .unwrap_or(n);
            on_time.max(n.saturating_sub(keep))
        }
        CatchUp::Latest => n.saturating_sub(1),
        CatchUp::All => n.saturating_sub(keep),
    };
    let create = (first_created..n)
        .map(|i| {
            let s = slots[i];
            let prev = match i {
                0 => cadence.prev_before(s.logical),
                _ => Some(slots[i - 1].logical),
            };
            cadence.run(s.logical, s.end, prev)
        })
        .collect();
    let skipped = slots[first_created.saturating_sub(SKIPPED_LISTED)..first_created]
        .iter()
        .map(|s| s.logical)
        .collect();
    Due {
        create,
        skipped,
        skipped_count: first_created as u64 + uncounted,
        skipped_count_exact: exact,
        cursor: slots.last().map(|s| s.logical),
    }
}

/// The first instant whose calendar date in `tz` is `date` or later.
fn first_instant(tz: Tz, date: NaiveDate) -> Option<DateTime<Utc>> {
    // Offsets stay within ±16 hours (local mean times included): the instant lies within 26
    // hours of the date's midnight read as UTC. A day a zone skipped (Pacific/Apia,
    // 2011-12-30) starts with the next one.
    let midnight = date.and_time(NaiveTime::MIN).and_utc().timestamp();
    let local_date =
        |s: i64| DateTime::<Utc>::from_timestamp(s, 0).map(|t| t.with_timezone(&tz).date_naive());
    let (mut lo, mut hi) = (midnight - 26 * 3600, midnight + 26 * 3600);
    // Both ends must be representable; the search keeps `lo` before the date, `hi` on or after.
    local_date(lo)?;
    local_date(hi)?;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_date(mid)? >= date {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::<Utc>::from_timestamp(hi, 0)
}

/// The runs of a backfill: every run whose logical date falls on a calendar date from `start`
/// to `end` (both included) in the schedule's time zone, oldest first, or newest first when
/// `reverse`. Whether they are due yet is not checked (there is no clock here): the caller
/// drops or refuses runs with `interval_end` after now.
///
/// Refuses, naming the field: `end` before `start`, a range with no run at all (`start`), a
/// range with more than `limit` runs (`end`), dates too far out to handle.
pub fn backfill_runs(
    cadence: &Cadence,
    start: NaiveDate,
    end: NaiveDate,
    reverse: bool,
    limit: usize,
) -> Result<Vec<LogicalRun>, ScheduleError> {
    if end < start {
        return Err(ScheduleError::ReversedRange { start, end });
    }
    let out_of_range =
        |field: &'static str, date: NaiveDate| ScheduleError::DateOutOfRange { field, date };
    let from = first_instant(cadence.tz, start).ok_or_else(|| out_of_range("start", start))?;
    let until = end
        .succ_opt()
        .and_then(|d| first_instant(cadence.tz, d))
        .ok_or_else(|| out_of_range("end", end))?;

    let mut logicals = Vec::new();
    let mut next = cadence.next_at_or_after(from);
    while let Some(t) = next.filter(|t| *t < until) {
        if logicals.len() == limit {
            return Err(ScheduleError::TooManyRuns {
                start,
                end,
                limit,
                cadence: cadence.to_string(),
            });
        }
        logicals.push(t);
        next = cadence.next_after(t);
    }
    let Some(&last) = logicals.last() else {
        return Err(ScheduleError::EmptyRange {
            start,
            end,
            cadence: cadence.to_string(),
        });
    };
    // `next` is the tick after the last run: its interval's end.
    let last_end = next.ok_or_else(|| ScheduleError::NoTickAfter {
        logical_date: last,
        cadence: cadence.to_string(),
    })?;
    let mut prev = cadence.prev_before(logicals[0]);
    let mut runs = Vec::with_capacity(logicals.len());
    for (i, &logical) in logicals.iter().enumerate() {
        let interval_end = logicals.get(i + 1).copied().unwrap_or(last_end);
        runs.push(cadence.run(logical, interval_end, prev));
        prev = Some(logical);
    }
    if reverse {
        runs.reverse();
    }
    Ok(runs)
}

/// Whether two ranges, each `(first, last)` with both ends included, share a value: for the
/// coordinator's refusal of a backfill whose dates overlap a running backfill of the same
/// schedule.
pub fn ranges_overlap<T: Ord>(a: (T, T), b: (T, T)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test instant")
            .with_timezone(&Utc)
    }

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("test date")
    }

    fn cadence(cron: &str, tz: &str) -> Cadence {
        Cadence::new(cron, tz).expect("test cadence")
    }

    fn logicals(runs: &[LogicalRun]) -> Vec<DateTime<Utc>> {
        runs.iter().map(|r| r.logical_date).collect()
    }

    /// The ticks from `from` on, `n` of them.
    fn ticks(c: &Cadence, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = c.next_at_or_after(from);
        while let Some(tick) = t.filter(|_| out.len() < n) {
            out.push(tick);
            t = c.next_after(tick);
        }
        out
    }

    #[test]
    fn a_daily_cadence_fires_at_the_local_time_of_its_zone() {
        let c = cadence("0 2 * * *", "Asia/Shanghai");
        // 02:00 in Shanghai (UTC+8) is 18:00 UTC the day before.
        assert_eq!(
            c.next_after(utc("2026-01-22T10:00:00Z")),
            Some(utc("2026-01-22T18:00:00Z"))
        );
        // Strictly after: a tick is not its own successor.
        assert_eq!(
            c.next_after(utc("2026-01-22T18:00:00Z")),
            Some(utc("2026-01-23T18:00:00Z"))
        );
        assert_eq!(
            c.prev_before(utc("2026-01-22T18:00:00Z")),
            Some(utc("2026-01-21T18:00:00Z"))
        );
        assert_eq!(
            c.prev_at_or_before(utc("2026-01-22T18:00:00Z")),
            Some(utc("2026-01-22T18:00:00Z"))
        );
        assert!(c.is_tick(utc("2026-01-22T18:00:00Z")));
        assert!(!c.is_tick(utc("2026-01-22T02:00:00Z")));
        assert_eq!(
            c.local_date(utc("2026-01-22T18:00:00Z")),
            date("2026-01-23")
        );
        assert_eq!(c.cron(), "0 2 * * *");
        assert_eq!(c.timezone(), "Asia/Shanghai");
        assert_eq!(c.to_string(), "`0 2 * * *` in Asia/Shanghai");
    }

    #[test]
    fn an_hourly_cadence_and_fractions_of_seconds() {
        let c = cadence("0 * * * *", "UTC");
        assert_eq!(
            c.next_after(utc("2026-01-22T10:30:00Z")),
            Some(utc("2026-01-22T11:00:00Z"))
        );
        assert_eq!(
            c.next_after(utc("2026-01-22T10:59:59.999Z")),
            Some(utc("2026-01-22T11:00:00Z"))
        );
        assert_eq!(
            c.next_after(utc("2026-01-22T11:00:00.001Z")),
            Some(utc("2026-01-22T12:00:00Z"))
        );
        assert_eq!(
            c.prev_before(utc("2026-01-22T11:00:00.001Z")),
            Some(utc("2026-01-22T11:00:00Z"))
        );
        assert_eq!(
            c.next_at_or_after(utc("2026-01-22T11:00:00Z")),
            Some(utc("2026-01-22T11:00:00Z"))
        );
        assert!(!c.is_tick(utc("2026-01-22T11:00:00.5Z")));
        // Seconds first, when there are 6 fields; nicknames.
        let every_10s = cadence("*/10 * * * * *", "UTC");
        assert_eq!(
            every_10s.next_after(utc("2026-01-22T11:00:00Z")),
            Some(utc("2026-01-22T11:00:10Z"))
        );
        let daily = cadence("@daily", "UTC");
        assert_eq!(
            daily.next_after(utc("2026-01-22T11:00:00Z")),
            Some(utc("2026-01-23T00:00:00Z"))
        );
    }

    #[test]
    fn placeholders_of_a_daily_run_in_utc() {
        let c = cadence("0 0 * * *", "UTC");
        let run = c.run_at(utc("2026-01-22T00:00:00Z")).expect("a tick");
        assert_eq!(run.interval_end, utc("2026-01-23T00:00:00Z"));
        assert_eq!(run.prev_logical_date, Some(utc("2026-01-21T00:00:00Z")));
        let p = run.placeholders();
        assert_eq!(p["ds"], "2026-01-22");
        assert_eq!(p["ds_nodash"], "20260122");
        assert_eq!(p["prev_ds"], "2026-01-21");
        assert_eq!(p["next_ds"], "2026-01-23");
        assert_eq!(p["logical_date"], "2026-01-22T00:00:00+00:00");
        assert_eq!(p["data_interval_start"], "2026-01-22T00:00:00+00:00");
        assert_eq!(p["data_interval_end"], "2026-01-23T00:00:00+00:00");
        let names: Vec<&str> = p.keys().map(String::as_str).collect();
        let mut expected = PLACEHOLDER_NAMES.to_vec();
        expected.sort_unstable();
        assert_eq!(names, expected);
    }

    #[test]
    fn placeholders_are_dates_of_the_schedules_zone() {
        let c = cadence("0 0 * * *", "Asia/Shanghai");
        // Midnight of 2026-01-22 in Shanghai is 16:00 UTC on the 21st.
        let run = c.run_at(utc("2026-01-21T16:00:00Z")).expect("a tick");
        assert_eq!(run.timezone(), "Asia/Shanghai");
        let p = run.placeholders();
        assert_eq!(p["ds"], "2026-01-22");
        assert_eq!(p["ds_nodash"], "20260122");
        assert_eq!(p["prev_ds"], "2026-01-21");
        assert_eq!(p["next_ds"], "2026-01-23");
        assert_eq!(p["logical_date"], "2026-01-22T00:00:00+08:00");
        assert_eq!(p["data_interval_start"], "2026-01-22T00:00:00+08:00");
        assert_eq!(p["data_interval_end"], "2026-01-23T00:00:00+08:00");
    }

    #[test]
    fn run_at_refuses_an_instant_that_is_not_a_tick() {
        let c = cadence("0 0 * * *", "Asia/Shanghai");
        let e = c
            .run_at(utc("2026-01-22T00:00:00Z"))
            .expect_err("midnight UTC is 08:00 in Shanghai");
        assert_eq!(e.field(), "logical_date");
        assert_eq!(
            e.to_string(),
            "logical_date: 2026-01-22T00:00:00+00:00 is not a tick of `0 0 * * *` in Asia/Shanghai"
        );
    }

    #[test]
    fn a_new_schedule_first_runs_for_the_interval_after_its_creation() {
        let c = cadence("0 0 * * *", "UTC");
        let created = utc("2026-01-22T10:00:00Z");
        let grace = TimeDelta::minutes(10);
        // Nothing is due until the interval that starts at the next midnight has ended.
        let before = due_runs(
            &c,
            CatchUp::All,
            10,
            created,
            utc("2026-01-23T23:59:59Z"),
            grace,
        );
        assert!(before.create.is_empty());
        assert_eq!(before.skipped_count, 0);
        assert_eq!(before.cursor, None);
        let due = due_runs(
            &c,
            CatchUp::None,
            10,
            created,
            utc("2026-01-24T00:00:05Z"),
            grace,
        );
        assert_eq!(logicals(&due.create), vec![utc("2026-01-23T00:00:00Z")]);
        assert_eq!(due.create[0].interval_end, utc("2026-01-24T00:00:00Z"));
        assert_eq!(due.cursor, Some(utc("2026-01-23T00:00:00Z")));
        assert!(due.skipped.is_empty());
        // The next call, from the stored cursor, finds nothing new.
        let again = due_runs(
            &c,
            CatchUp::None,
            10,
            utc("2026-01-23T00:00:00Z"),
            utc("2026-01-24T00:00:10Z"),
            grace,
        );
        assert!(again.create.is_empty());
        assert_eq!(again.cursor, None);
    }

    /// A daily schedule whose last decided run is the one of 2026-01-20, and a coordinator
    /// back three days later: the runs of the 21st, 22nd and 23rd are due.
    fn after_three_days_down(policy: CatchUp, max_catchup: u32, now: &str) -> Due {
        due_runs(
            &cadence("0 0 * * *", "UTC"),
            policy,
            max_catchup,
            utc("2026-01-20T00:00:00Z"),
            utc(now),
            TimeDelta::minutes(10),
        )
    }

    const DAY_21: &str = "2026-01-21T00:00:00Z";
    const DAY_22: &str = "2026-01-22T00:00:00Z";
    const DAY_23: &str = "2026-01-23T00:00:00Z";

    #[test]
    fn catch_up_none_creates_only_the_run_on_time() {
        // Back five minutes after the newest run came due: it is on time.
        let due = after_three_days_down(CatchUp::None, 10, "2026-01-24T00:05:00Z");
        assert_eq!(logicals(&due.create), vec![utc(DAY_23)]);
        assert_eq!(due.skipped, vec![utc(DAY_21), utc(DAY_22)]);
        assert_eq!(due.skipped_count, 2);
        assert!(due.skipped_count_exact);
        assert_eq!(due.cursor, Some(utc(DAY_23)));
        // Back at noon: every due run was missed.
        let due = after_three_days_down(CatchUp::None, 10, "2026-01-24T12:00:00Z");
        assert!(due.create.is_empty());
        assert_eq!(due.skipped, vec![utc(DAY_21), utc(DAY_22), utc(DAY_23)]);
        assert_eq!(due.skipped_count, 3);
        assert_eq!(due.cursor, Some(utc(DAY_23)));
    }

    #[test]
    fn catch_up_latest_creates_the_newest_run() {
        let due = after_three_days_down(CatchUp::Latest, 10, "2026-01-24T12:00:00Z");
        assert_eq!(logicals(&due.create), vec![utc(DAY_23)]);
        assert_eq!(due.create[0].prev_logical_date, Some(utc(DAY_22)));
        assert_eq!(due.skipped, vec![utc(DAY_21), utc(DAY_22)]);
        assert_eq!(due.skipped_count, 2);
        assert_eq!(due.cursor, Some(utc(DAY_23)));
    }

    #[test]
    fn catch_up_all_creates_every_run_oldest_first_up_to_max_catchup() {
        let due = after_three_days_down(CatchUp::All, 10, "2026-01-24T12:00:00Z");
        assert_eq!(
            logicals(&due.create),
            vec![utc(DAY_21), utc(DAY_22), utc(DAY_23)]
        );
        let ends: Vec<_> = due.create.iter().map(|r| r.interval_end).collect();
        assert_eq!(
            ends,
            vec![utc(DAY_22), utc(DAY_23), utc("2026-01-24T00:00:00Z")]
        );
        assert_eq!(
            due.create[0].prev_logical_date,
            Some(utc("2026-01-20T00:00:00Z"))
        );
        assert_eq!(due.create[1].prev_logical_date, Some(utc(DAY_21)));
        assert!(due.skipped.is_empty());
        assert_eq!(due.skipped_count, 0);
        assert_eq!(due.cursor, Some(utc(DAY_23)));

        let due = after_three_days_down(CatchUp::All, 2, "2026-01-24T12:00:00Z");
        assert_eq!(logicals(&due.create), vec![utc(DAY_22), utc(DAY_23)]);
        assert_eq!(due.skipped, vec![utc(DAY_21)]);
        assert_eq!(due.skipped_count, 1);
        assert_eq!(due.cursor, Some(utc(DAY_23)));

        // A max_catchup of 0 acts as 1.
        let due = after_three_days_down(CatchUp::All, 0, "2026-01-24T12:00:00Z");
        assert_eq!(logicals(&due.create), vec![utc(DAY_23)]);
    }

    #[test]
    fn a_run_not_yet_due_is_not_considered() {
        let due = after_three_days_down(CatchUp::All, 10, "2026-01-23T23:59:59Z");
        assert_eq!(logicals(&due.create), vec![utc(DAY_21), utc(DAY_22)]);
        assert_eq!(due.cursor, Some(utc(DAY_22)));
    }

    #[test]
    fn a_year_of_a_minute_cron_is_planned_within_the_bound() {
        let c = cadence("* * * * *", "UTC");
        let after = utc("2025-01-01T00:00:00Z");
        let now = utc("2026-01-01T00:00:30Z");
        let due = due_runs(&c, CatchUp::All, 5, after, now, TimeDelta::minutes(1));
        let newest = utc("2025-12-31T23:59:00Z");
        assert_eq!(due.create.len(), 5);
        assert_eq!(due.create[4].logical_date, newest);
        assert_eq!(due.create[4].interval_end, utc("2026-01-01T00:00:00Z"));
        assert_eq!(due.create[0].logical_date, newest - TimeDelta::minutes(4));
        assert_eq!(due.cursor, Some(newest));
        assert_eq!(due.skipped.len(), SKIPPED_LISTED);
        assert_eq!(
            due.skipped.last().copied(),
            Some(newest - TimeDelta::minutes(5))
        );
        assert!(!due.skipped_count_exact);
        assert!(due.skipped_count >= (SCAN_LIMIT + SKIPPED_LISTED) as u64);

        // Every second, for a year, under `none`.
        let every_second = cadence("* * * * * *", "UTC");
        let due = due_runs(
            &every_second,
            CatchUp::None,
            10,
            after,
            now,
            TimeDelta::seconds(3),
        );
        // On time: the runs that came due at most 3 s ago, 00:00:27 to 00:00:30.
        assert_eq!(
            logicals(&due.create),
            (26..=29)
                .map(|s| utc("2026-01-01T00:00:00Z") + TimeDelta::seconds(s))
                .collect::<Vec<_>>()
        );
        assert_eq!(due.cursor, Some(utc("2026-01-01T00:00:29Z")));
    }

    #[test]
    fn a_backlog_just_past_the_bound_is_counted_exactly() {
        let c = cadence("* * * * *", "UTC");
        let after = utc("2026-01-01T00:00:00Z");
        let backlog = SCAN_LIMIT as i64 + 50;
        // Logical dates after+1min ..= after+backlog min are due when now = after + backlog+1 min.
        let now = after + TimeDelta::minutes(backlog + 1);
        let due = due_runs(&c, CatchUp::All, 5, after, now, TimeDelta::zero());
        assert!(due.skipped_count_exact);
        assert_eq!(due.skipped_count, backlog as u64 - 5);
        assert_eq!(due.skipped.len(), SKIPPED_LISTED);
        assert_eq!(due.cursor, Some(after + TimeDelta::minutes(backlog)));
        assert_eq!(
            due.create[0].logical_date,
            after + TimeDelta::minutes(backlog - 4)
        );
    }

    #[test]
    fn daylight_saving_changes_in_new_york() {
        // 2026-03-08: 02:00 EST becomes 03:00 EDT. A fixed 02:30 fires at the end of the gap.
        let c = cadence("30 2 * * *", "America/New_York");
        assert_eq!(
            ticks(&c, utc("2026-03-07T00:00:00Z"), 3),
            vec![
                utc("2026-03-07T07:30:00Z"), // 02:30 EST
                utc("2026-03-08T07:00:00Z"), // 03:00 EDT, the end of the gap
                utc("2026-03-09T06:30:00Z"), // 02:30 EDT
            ]
        );
        // An hourly schedule has no tick in the gap.
        let hourly = cadence("0 * * * *", "America/New_York");
        assert_eq!(
            ticks(&hourly, utc("2026-03-08T05:00:00Z"), 3),
            vec![
                utc("2026-03-08T05:00:00Z"), // 00:00 EST
                utc("2026-03-08T06:00:00Z"), // 01:00 EST
                utc("2026-03-08T07:00:00Z"), // 03:00 EDT
            ]
        );
        // 2026-11-01: 02:00 EDT becomes 01:00 EST. A fixed 01:30 fires once, the first time.
        let c = cadence("30 1 * * *", "America/New_York");
        assert_eq!(
            ticks(&c, utc("2026-10-31T00:00:00Z"), 3),
            vec![
                utc("2026-10-31T05:30:00Z"), // 01:30 EDT
                utc("2026-11-01T05:30:00Z"), // 01:30 EDT, not again at 01:30 EST
                utc("2026-11-02T06:30:00Z"), // 01:30 EST
            ]
        );
        // An hourly schedule fires on both passes of the repeated hour.
        assert_eq!(
            ticks(&hourly, utc("2026-11-01T04:00:00Z"), 4),
            vec![
                utc("2026-11-01T04:00:00Z"), // 00:00 EDT
                utc("2026-11-01T05:00:00Z"), // 01:00 EDT
                utc("2026-11-01T06:00:00Z"), // 01:00 EST
                utc("2026-11-01T07:00:00Z"), // 02:00 EST
            ]
        );
        // Walking back agrees with walking forward, across both changes.
        for (c, from) in [
            (&c, utc("2026-10-25T00:00:00Z")),
            (&hourly, utc("2026-11-01T00:00:00Z")),
            (&hourly, utc("2026-03-07T20:00:00Z")),
            (
                &cadence("30 2 * * *", "America/New_York"),
                utc("2026-03-01T00:00:00Z"),
            ),
            (
                &cadence("*/20 1 * * *", "America/New_York"),
                utc("2026-10-30T00:00:00Z"),
            ),
        ] {
            let forward = ticks(c, from, 20);
            for pair in forward.windows(2) {
                assert_eq!(c.prev_before(pair[1]), Some(pair[0]), "{c}");
                assert!(c.is_tick(pair[1]), "{c}");
            }
        }
        // Backfills and catch-up over the change days: one run a day, dated by the local day.
        let c = cadence("30 2 * * *", "America/New_York");
        let runs = backfill_runs(&c, date("2026-03-07"), date("2026-03-09"), false, 10)
            .expect("three days");
        let ds: Vec<String> = runs
            .iter()
            .map(|r| r.placeholders()["ds"].clone())
            .collect();
        assert_eq!(ds, vec!["2026-03-07", "2026-03-08", "2026-03-09"]);
        assert_eq!(
            runs[1].placeholders()["data_interval_start"],
            "2026-03-08T03:00:00-04:00"
        );
        let due = due_runs(
            &c,
            CatchUp::All,
            10,
            utc("2026-03-06T07:30:00Z"),
            utc("2026-03-10T12:00:00Z"),
            TimeDelta::zero(),
        );
        assert_eq!(logicals(&due.create), logicals(&runs));
    }

    #[test]
    fn bad_cron_expressions_name_the_cron_field() {
        for (cron, message) in [
            ("", "cron: must not be empty"),
            ("   ", "cron: must not be empty"),
            (
                "0 2 * *",
                "cron: `0 2 * *` is not a valid cron expression: it has 4 fields",
            ),
            (
                "0 0 2 * * * 2026",
                "cron: `0 0 2 * * * 2026` is not a valid cron expression: it has 7 fields",
            ),
            (
                "61 * * * *",
                "cron: `61 * * * *` is not a valid cron expression: 61 is out of range for the \
                 minute field (0 to 59)",
            ),
            (
                "0 0 25 * * *",
                "cron: `0 0 25 * * *` is not a valid cron expression: 25 is out of range for the \
                 hour field (0 to 23)",
            ),
            (
                "0 2 1-32 * *",
                "cron: `0 2 1-32 * *` is not a valid cron expression: 32 is out of range for the \
                 day-of-month field (1 to 31)",
            ),
            (
                "@reboot",
                "cron: `@reboot` is not a valid cron expression: unknown nickname (known: \
                 @yearly, @annually, @monthly, @weekly, @daily, @hourly)",
            ),
            (
                "0 2 * * xyz",
                "cron: `0 2 * * xyz` is not a valid cron expression: ",
            ),
            (
                "0 0 30 2 *",
                "cron: `0 0 30 2 *` is not a valid cron expression: it never fires",
            ),
        ] {
            let e = Cadence::new(cron, "UTC").expect_err(cron);
            assert_eq!(e.field(), "cron", "{cron}");
            let text = e.to_string();
            assert!(text.starts_with(message), "{cron}: {text}");
            assert!(text.ends_with("or 6 with seconds first"), "{cron}: {text}");
        }
    }

    #[test]
    fn a_rare_day_is_a_valid_cadence() {
        let c = cadence("0 0 29 2 *", "UTC");
        assert_eq!(
            c.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2028-02-29T00:00:00Z"))
        );
        assert!(Cadence::new("0 0 31 4,6 *", "UTC").is_err());
    }

    #[test]
    fn an_unknown_time_zone_names_the_timezone_field() {
        let e = Cadence::new("0 2 * * *", "Europe/Pariss").expect_err("a typo");
        assert_eq!(e.field(), "timezone");
        assert_eq!(
            e.to_string(),
            "timezone: unknown time zone `Europe/Pariss` (an IANA name such as `Asia/Shanghai` or `UTC`)"
        );
        let e = Cadence::new("0 2 * * *", "").expect_err("empty");
        assert_eq!(e.field(), "timezone");
        assert!(Cadence::new("0 2 * * *", "Europe/Paris").is_ok());
    }

    #[test]
    fn a_backfill_covers_the_local_dates_of_its_range() {
        let c = cadence("0 0 * * *", "Asia/Shanghai");
        let runs = backfill_runs(&c, date("2026-01-01"), date("2026-01-03"), false, 10)
            .expect("three days");
        let ds: Vec<String> = runs
            .iter()
            .map(|r| r.placeholders()["ds"].clone())
            .collect();
        assert_eq!(ds, vec!["2026-01-01", "2026-01-02", "2026-01-03"]);
        assert_eq!(runs[0].logical_date, utc("2025-12-31T16:00:00Z"));
        assert_eq!(runs[0].prev_logical_date, Some(utc("2025-12-30T16:00:00Z")));
        assert_eq!(runs[2].interval_end, utc("2026-01-03T16:00:00Z"));
        for pair in runs.windows(2) {
            assert_eq!(pair[0].interval_end, pair[1].logical_date);
            assert_eq!(pair[1].prev_logical_date, Some(pair[0].logical_date));
        }
        let reversed = backfill_runs(&c, date("2026-01-01"), date("2026-01-03"), true, 3)
            .expect("exactly the limit");
        assert_eq!(
            logicals(&reversed),
            logicals(&runs).into_iter().rev().collect::<Vec<_>>()
        );
        // Every hourly tick whose local date is in the range.
        let hourly = cadence("0 * * * *", "Asia/Shanghai");
        let runs = backfill_runs(&hourly, date("2026-01-01"), date("2026-01-02"), false, 48)
            .expect("two days");
        assert_eq!(runs.len(), 48);
        assert_eq!(runs[0].logical_date, utc("2025-12-31T16:00:00Z"));
        assert_eq!(runs[47].logical_date, utc("2026-01-02T15:00:00Z"));
    }

    #[test]
    fn bad_backfill_ranges_name_their_field() {
        let daily = cadence("0 0 * * *", "UTC");
        let e = backfill_runs(&daily, date("2026-01-05"), date("2026-01-01"), false, 10)
            .expect_err("reversed");
        assert_eq!(e.field(), "end");
        assert_eq!(e.to_string(), "end: 2026-01-01 is before start 2026-01-05");

        let monthly = cadence("0 0 1 * *", "UTC");
        let e = backfill_runs(&monthly, date("2026-01-02"), date("2026-01-20"), false, 10)
            .expect_err("no first of the month");
        assert_eq!(e.field(), "start");
        assert!(e.to_string().contains("the range is empty"), "{e}");

        let hourly = cadence("0 * * * *", "UTC");
        let e = backfill_runs(&hourly, date("2026-01-01"), date("2026-01-03"), false, 50)
            .expect_err("72 runs");
        assert_eq!(e.field(), "end");
        assert_eq!(
            e.to_string(),
            "end: the dates from 2026-01-01 to 2026-01-03 hold more than 50 runs of `0 * * * *` in UTC; narrow the range"
        );

        let e = backfill_runs(&daily, date("2026-01-01"), NaiveDate::MAX, false, 10)
            .expect_err("out of range");
        assert_eq!(e.field(), "end");
    }

    #[test]
    fn overlapping_ranges() {
        let r = |a: &str, b: &str| (date(a), date(b));
        assert!(ranges_overlap(
            r("2026-01-01", "2026-01-10"),
            r("2026-01-10", "2026-01-20")
        ));
        assert!(ranges_overlap(
            r("2026-01-05", "2026-01-06"),
            r("2026-01-01", "2026-01-10")
        ));
        assert!(!ranges_overlap(
            r("2026-01-01", "2026-01-09"),
            r("2026-01-10", "2026-01-20")
        ));
        assert!(!ranges_overlap(
            r("2026-01-21", "2026-01-22"),
            r("2026-01-10", "2026-01-20")
        ));
    }

    #[test]
    fn decide_under_each_concurrency_policy() {
        for policy in Concurrency::ALL {
            assert_eq!(decide(*policy, false), Decision::Start, "{policy}");
        }
        assert_eq!(decide(Concurrency::Allow, true), Decision::Start);
        assert_eq!(decide(Concurrency::Skip, true), Decision::Skip);
        assert_eq!(decide(Concurrency::Queue, true), Decision::Wait);
        assert_eq!(
            decide(Concurrency::Replace, true),
            Decision::StartAfterCancellingPrevious
        );
    }

    #[test]
    fn reprocess_picks_dates_by_their_previous_run() {
        use TaskStatus::*;
        let states = [
            None,
            Some(Pending),
            Some(Running),
            Some(Paused),
            Some(Completed),
            Some(Failed),
            Some(Cancelled),
        ];
        let picked = |p: Reprocess| -> Vec<Option<TaskStatus>> {
            states.iter().copied().filter(|s| p.includes(*s)).collect()
        };
        assert_eq!(picked(Reprocess::Missing), vec![None]);
        assert_eq!(
            picked(Reprocess::Failed),
            vec![None, Some(Failed), Some(Cancelled)]
        );
        assert_eq!(picked(Reprocess::All), states.to_vec());
    }

    #[test]
    fn policies_are_lowercase_strings() {
        for p in CatchUp::ALL {
            assert_eq!(p.as_str().parse::<CatchUp>(), Ok(*p));
            let json = serde_json::to_string(p).expect("serialize");
            assert_eq!(json, format!("\"{p}\""));
            assert_eq!(serde_json::from_str::<CatchUp>(&json).ok(), Some(*p));
        }
        for p in Concurrency::ALL {
            assert_eq!(p.to_string().parse::<Concurrency>(), Ok(*p));
        }
        for p in Reprocess::ALL {
            assert_eq!(p.to_string().parse::<Reprocess>(), Ok(*p));
        }
        assert_eq!(
            serde_json::from_str::<Concurrency>("\"replace\"").ok(),
            Some(Concurrency::Replace)
        );
        assert!(serde_json::from_str::<CatchUp>("\"Latest\"").is_err());
        let e = "sometimes".parse::<CatchUp>().expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "unknown catch-up policy `sometimes` (expected one of: none, latest, all)"
        );
        assert_eq!(CatchUp::default(), CatchUp::Latest);
        assert_eq!(Concurrency::default(), Concurrency::Queue);
        assert_eq!(Reprocess::default(), Reprocess::Missing);
    }

    #[test]
    fn max_catchup_is_checked() {
        assert_eq!(check_max_catchup(1), Ok(1));
        assert_eq!(check_max_catchup(MAX_CATCHUP_LIMIT), Ok(MAX_CATCHUP_LIMIT));
        for bad in [0, MAX_CATCHUP_LIMIT + 1] {
            let e = check_max_catchup(bad).expect_err("out of range");
            assert_eq!(e.field(), "max_catchup");
        }
    }
}
