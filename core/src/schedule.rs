//! Backup schedules: the forms a person types into `backups.schedule()`,
//! normalised to a 5-field cron expression plus an IANA time zone.
//!
//! Accepted forms (keywords are case-insensitive):
//! - `daily HH:MM [Zone/Name]` (also plain `HH:MM [Zone/Name]`, Heroku's `--at`)
//! - `hourly [Zone/Name]`
//! - `weekly <day> HH:MM [Zone/Name]`
//! - a 5-field cron expression, optionally followed by a zone
//!
//! The zone defaults to UTC. Occurrences are computed by `croner` in the
//! zone with `chrono-tz`, so daylight-saving changes are the libraries' job.

use std::str::FromStr;

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// Shown as the HINT of every schedule error.
pub const ACCEPTED_FORMS: &str = "Accepted forms: 'daily HH:MM [Zone]' (e.g. 'daily 07:00 Europe/Paris'), \
'HH:MM [Zone]', 'hourly [Zone]', 'weekly <day> HH:MM [Zone]' (e.g. 'weekly sun 03:00'), \
or a 5-field cron expression such as '30 2 * * 1-5' optionally followed by a zone. \
Zones are IANA names (Europe/Paris, America/New_York, UTC); the default is UTC.";

/// A parsed schedule, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Normalised 5-field cron expression (minute hour day month weekday).
    pub cron: String,
    /// Canonical IANA zone name.
    pub timezone: String,
    /// What it means, in words: "daily at 07:00 Europe/Paris".
    pub description: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ScheduleError(pub String);

fn err(msg: impl Into<String>) -> ScheduleError {
    ScheduleError(msg.into())
}

const DAYS: [(&str, &str, u8); 7] = [
    ("sun", "Sunday", 0),
    ("mon", "Monday", 1),
    ("tue", "Tuesday", 2),
    ("wed", "Wednesday", 3),
    ("thu", "Thursday", 4),
    ("fri", "Friday", 5),
    ("sat", "Saturday", 6),
];

/// Parse what a person typed.
pub fn parse(spec: &str) -> Result<Schedule, ScheduleError> {
    let words: Vec<&str> = spec.split_whitespace().collect();
    let Some(first) = words.first() else {
        return Err(err("empty schedule"));
    };
    match first.to_ascii_lowercase().as_str() {
        "hourly" => {
            let tz = zone_at(&words, 1, 2, spec)?;
            Ok(Schedule {
                cron: "0 * * * *".into(),
                description: format!("hourly, on the hour ({})", tz.name()),
                timezone: tz.name().into(),
            })
        }
        "daily" => {
            let time = words.get(1).ok_or_else(|| err(format!("\"{spec}\" needs a time, as in 'daily 07:00'")))?;
            let (h, m) = parse_time(time)?;
            let tz = zone_at(&words, 2, 3, spec)?;
            Ok(daily(h, m, tz))
        }
        "weekly" => {
            let day = words
                .get(1)
                .ok_or_else(|| err(format!("\"{spec}\" needs a day and a time, as in 'weekly sun 03:00'")))?;
            let (dow, day_name) = parse_day(day)?;
            let time = words
                .get(2)
                .ok_or_else(|| err(format!("\"{spec}\" needs a time after the day, as in 'weekly sun 03:00'")))?;
            let (h, m) = parse_time(time)?;
            let tz = zone_at(&words, 3, 4, spec)?;
            Ok(Schedule {
                cron: format!("{m} {h} * * {dow}"),
                description: format!("weekly on {day_name} at {h:02}:{m:02} {}", tz.name()),
                timezone: tz.name().into(),
            })
        }
        _ if first.contains(':') => {
            let (h, m) = parse_time(first)?;
            let tz = zone_at(&words, 1, 2, spec)?;
            Ok(daily(h, m, tz))
        }
        _ if words.len() == 5 || words.len() == 6 => {
            let cron = words[..5].join(" ");
            parse_cron(&cron).map_err(|e| err(format!("invalid cron expression \"{cron}\": {e}")))?;
            let tz = zone_at(&words, 5, 6, spec)?;
            Ok(Schedule { description: format!("on cron '{cron}' ({})", tz.name()), cron, timezone: tz.name().into() })
        }
        _ => Err(err(format!("unrecognised schedule \"{spec}\""))),
    }
}

fn daily(h: u32, m: u32, tz: Tz) -> Schedule {
    Schedule {
        cron: format!("{m} {h} * * *"),
        description: format!("daily at {h:02}:{m:02} {}", tz.name()),
        timezone: tz.name().into(),
    }
}

/// `HH:MM`, 24-hour clock. A bare hour ("7") is ambiguous and refused.
fn parse_time(s: &str) -> Result<(u32, u32), ScheduleError> {
    let bad = || err(format!("invalid time \"{s}\": use a 24-hour HH:MM such as 07:00 or 19:30"));
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok((h, m))
}

fn parse_day(s: &str) -> Result<(u8, &'static str), ScheduleError> {
    let l = s.to_ascii_lowercase();
    DAYS.iter()
        .find(|(short, long, _)| l == *short || l == long.to_ascii_lowercase())
        .map(|(_, long, n)| (*n, *long))
        .ok_or_else(|| err(format!("invalid day \"{s}\": use sun, mon, tue, wed, thu, fri or sat")))
}

/// The optional zone at `words[at]`; nothing may follow it.
fn zone_at(words: &[&str], at: usize, max_len: usize, spec: &str) -> Result<Tz, ScheduleError> {
    if words.len() > max_len {
        return Err(err(format!("unexpected \"{}\" in schedule \"{spec}\"", words[max_len])));
    }
    match words.get(at) {
        None => Ok(Tz::UTC),
        Some(z) => parse_zone(z),
    }
}

/// An IANA zone name, matched case-insensitively. Abbreviations such as EST
/// or CET are refused: they are ambiguous and most ignore daylight saving.
pub fn parse_zone(s: &str) -> Result<Tz, ScheduleError> {
    let found = Tz::from_str(s)
        .ok()
        .or_else(|| chrono_tz::TZ_VARIANTS.iter().copied().find(|tz| tz.name().eq_ignore_ascii_case(s)))
        .ok_or_else(|| {
            err(format!("unknown time zone \"{s}\": use an IANA name such as Europe/Paris or America/New_York"))
        })?;
    let name = found.name();
    if !name.contains('/') && !matches!(name, "UTC" | "GMT" | "Etc/UTC") {
        return Err(err(format!(
            "ambiguous time zone \"{s}\": use an IANA region name such as America/New_York or Europe/Berlin, or UTC"
        )));
    }
    Ok(found)
}

fn parse_cron(cron: &str) -> Result<Cron, croner::errors::CronError> {
    CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build().parse(cron)
}

/// The first occurrence strictly after `after`.
pub fn next_run(cron: &str, timezone: &str, after: DateTime<Utc>) -> Result<DateTime<Utc>, ScheduleError> {
    let tz = parse_zone(timezone)?;
    let cron = parse_cron(cron).map_err(|e| err(format!("invalid cron expression \"{cron}\": {e}")))?;
    // Cron works in whole minutes; drop the sub-second part so runs land on :00.
    let after = after.with_nanosecond(0).unwrap_or(after);
    cron.find_next_occurrence(&after.with_timezone(&tz), false)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| err(format!("no next run for \"{cron}\": {e}", cron = cron.pattern)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn daily_forms() {
        let s = parse("daily 07:00").unwrap();
        assert_eq!((s.cron.as_str(), s.timezone.as_str()), ("0 7 * * *", "UTC"));
        let s = parse("Daily 7:05 europe/paris").unwrap();
        assert_eq!((s.cron.as_str(), s.timezone.as_str()), ("5 7 * * *", "Europe/Paris"));
        assert_eq!(s.description, "daily at 07:05 Europe/Paris");
        let s = parse("02:00 America/New_York").unwrap();
        assert_eq!((s.cron.as_str(), s.timezone.as_str()), ("0 2 * * *", "America/New_York"));
    }

    #[test]
    fn hourly_weekly_and_cron() {
        assert_eq!(parse("hourly").unwrap().cron, "0 * * * *");
        let w = parse("weekly sun 03:00").unwrap();
        assert_eq!((w.cron.as_str(), w.timezone.as_str()), ("0 3 * * 0", "UTC"));
        let w = parse("weekly Friday 23:30 Asia/Tokyo").unwrap();
        assert_eq!(w.cron, "30 23 * * 5");
        assert_eq!(w.description, "weekly on Friday at 23:30 Asia/Tokyo");
        let c = parse("*/15 2-4 * * 1-5").unwrap();
        assert_eq!((c.cron.as_str(), c.timezone.as_str()), ("*/15 2-4 * * 1-5", "UTC"));
        let c = parse("0 6 1 * * Europe/London").unwrap();
        assert_eq!((c.cron.as_str(), c.timezone.as_str()), ("0 6 1 * *", "Europe/London"));
    }

    #[test]
    fn malformed_and_ambiguous_are_refused() {
        for bad in [
            "",
            "daily",
            "daily 7",
            "daily 24:00",
            "daily 07:60",
            "daily 7pm",
            "daily 07:00 Mars/Olympus",
            "daily 07:00 EST",
            "daily 07:00 Europe/Paris extra",
            "weekly 03:00",
            "weekly someday 03:00",
            "weekly sun",
            "hourly Nowhere/Land",
            "every day",
            "61 * * * *",
            "* * * * * * *",
            "0 0 0 * * *",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse("daily 07:00 Mars/Olympus").unwrap_err().0.contains("unknown time zone"));
        assert!(parse("daily 07:00 EST").unwrap_err().0.contains("ambiguous"));
    }

    #[test]
    fn next_run_in_zone_and_across_dst() {
        // Winter: Paris is UTC+1.
        let n = next_run("0 7 * * *", "Europe/Paris", at(2026, 11, 21, 12, 0)).unwrap();
        assert_eq!(n, at(2026, 11, 22, 6, 0));
        // Summer: UTC+2.
        let n = next_run("0 7 * * *", "Europe/Paris", at(2026, 7, 1, 12, 0)).unwrap();
        assert_eq!(n, at(2026, 7, 2, 5, 0));
        // The night Paris springs forward (2026-03-29), 07:00 local is 05:00 UTC.
        let n = next_run("0 7 * * *", "Europe/Paris", at(2026, 3, 28, 12, 0)).unwrap();
        assert_eq!(n, at(2026, 3, 29, 5, 0));
        // Strictly after: a run at exactly the slot goes to the next one.
        let n = next_run("0 * * * *", "UTC", at(2026, 1, 1, 10, 0)).unwrap();
        assert_eq!(n, at(2026, 1, 1, 11, 0));
        // Sub-second parts of `after` do not leak into the next run.
        let n = next_run("0 * * * *", "UTC", at(2026, 1, 1, 10, 0) + chrono::Duration::microseconds(74_651)).unwrap();
        assert_eq!(n, at(2026, 1, 1, 11, 0));
        // Weekly on Sunday.
        let n = next_run("0 3 * * 0", "UTC", at(2026, 11, 21, 12, 0)).unwrap();
        assert_eq!(n, at(2026, 11, 22, 3, 0));
    }
}
