//! SQL-callable helpers that need Rust. Names start with `_`: they are
//! internal, EXECUTE is revoked from PUBLIC, and the public SQL functions in
//! `sql/` call them as their owner.

use pgbackups_core::{link, naming, pattern, retention, schedule};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::gucs;

/// Microseconds between the Unix epoch and Postgres' (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

fn to_chrono(t: TimestampWithTimeZone) -> chrono::DateTime<chrono::Utc> {
    let micros = t.into_inner() + PG_EPOCH_OFFSET_MICROS;
    chrono::DateTime::from_timestamp_micros(micros).expect("timestamp in chrono's range")
}

fn from_chrono(t: chrono::DateTime<chrono::Utc>) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(t.timestamp_micros() - PG_EPOCH_OFFSET_MICROS)
        .expect("timestamp in Postgres' range")
}

fn schedule_error(e: schedule::ScheduleError) -> ! {
    ErrorReport::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e.0, "backups.schedule")
        .set_hint(schedule::ACCEPTED_FORMS)
        .report(PgLogLevel::ERROR);
    unreachable!()
}

/// Normalise a schedule as typed (`daily 07:00 Europe/Paris`) into cron and
/// zone; a malformed one is an ERROR whose HINT lists the accepted forms.
#[pg_extern(volatile)]
fn _parse_schedule(
    spec: &str,
) -> TableIterator<'static, (name!(cron, String), name!(timezone, String), name!(description, String))> {
    let s = schedule::parse(spec).unwrap_or_else(|e| schedule_error(e));
    TableIterator::once((s.cron, s.timezone, s.description))
}

/// The first run of `cron` in `timezone` strictly after `after`.
#[pg_extern(immutable, parallel_safe)]
fn _next_run(cron: &str, timezone: &str, after: TimestampWithTimeZone) -> TimestampWithTimeZone {
    let next = schedule::next_run(cron, timezone, to_chrono(after)).unwrap_or_else(|e| schedule_error(e));
    from_chrono(next)
}

/// Of the scheduled backups (`ids`, created at `created`), those the policy
/// no longer keeps, with days, weeks and months taken in `timezone`.
#[pg_extern(immutable, parallel_safe)]
fn _retention_expired(
    ids: Vec<i64>,
    created: Vec<TimestampWithTimeZone>,
    timezone: &str,
    retain_daily: i32,
    retain_weekly: i32,
    retain_monthly: i32,
) -> Vec<i64> {
    let tz = schedule::parse_zone(timezone).unwrap_or_else(|e| schedule_error(e));
    let backups: Vec<_> = ids.into_iter().zip(created.into_iter().map(to_chrono)).collect();
    let policy = retention::Policy {
        daily: retain_daily.max(0) as u32,
        weekly: retain_weekly.max(0) as u32,
        monthly: retain_monthly.max(0) as u32,
    };
    retention::expired(&backups, policy, tz)
}

/// `b` and 7 make `b007`.
#[pg_extern(immutable, parallel_safe)]
fn _format_name(prefix: &str, number: i64) -> String {
    let mut chars = prefix.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => naming::format_name(c, number),
        _ => error!("a name prefix is one letter, not {prefix:?}"),
    }
}

/// The signature of a download link for `name` expiring at `expires` (unix
/// seconds), keyed with `backups.link_secret`, which never leaves the server.
#[pg_extern(volatile)]
fn _link_signature(name: &str, expires: i64) -> String {
    let secret = gucs::string(&gucs::LINK_SECRET);
    link::sign(secret.as_bytes(), name, expires).unwrap_or_else(|_| {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "backups.link_secret is not set, so download links cannot be signed",
            "backups.url",
        )
        .set_hint("Set backups.link_secret in postgresql.conf to the same secret as the agent's link_secret, then SELECT pg_reload_conf();")
        .report(PgLogLevel::ERROR);
        unreachable!()
    })
}

/// The regular expressions pg_dump matches a selective capture's pattern
/// with: `{schema, name}`, schema NULL for an unqualified table pattern.
/// `what` is the capture() parameter (`exclude_table_data` names tables,
/// `exclude_schemas` schemas); a malformed pattern is an ERROR whose HINT
/// gives the syntax.
#[pg_extern(immutable, parallel_safe)]
fn _pattern_regexes(what: &str, pattern: &str) -> Vec<Option<String>> {
    let kind = if what == "exclude_schemas" { pattern::Kind::Schema } else { pattern::Kind::Table };
    match pattern::regexes(pattern, kind) {
        Ok(r) => vec![r.schema, Some(r.name)],
        Err(e) => {
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid {what} pattern: {e}"),
                "backups.capture",
            )
            .set_hint(pattern::SYNTAX)
            .report(PgLogLevel::ERROR);
            unreachable!()
        }
    }
}

/// The pattern syntax, for HINTs written in SQL.
#[pg_extern(immutable, parallel_safe)]
fn _pattern_syntax() -> &'static str {
    pattern::SYNTAX
}
