//! Which scheduled backups to keep: the newest backup of each of the last
//! N days, N weeks and N months that have a backup (grandfather-father-son).
//!
//! Periods are counted among those that have backups, not on the calendar,
//! so backups are never all expired just because the schedule stopped.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

/// The ids among `backups` (id, creation time) that the policy no longer
/// keeps, with days, weeks and months taken in `tz`.
pub fn expired(backups: &[(i64, DateTime<Utc>)], policy: Policy, tz: Tz) -> Vec<i64> {
    let mut newest_first: Vec<(i64, DateTime<Utc>)> = backups.to_vec();
    newest_first.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));

    let mut kept = HashSet::new();
    let local = |t: &DateTime<Utc>| t.with_timezone(&tz);
    keep_newest_per_period(
        &newest_first,
        policy.daily,
        |t| {
            let d = local(t).date_naive();
            (d.year(), d.ordinal())
        },
        &mut kept,
    );
    keep_newest_per_period(
        &newest_first,
        policy.weekly,
        |t| {
            let w = local(t).iso_week();
            (w.year(), w.week())
        },
        &mut kept,
    );
    keep_newest_per_period(
        &newest_first,
        policy.monthly,
        |t| {
            let d = local(t);
            (d.year(), d.month())
        },
        &mut kept,
    );

    let mut out: Vec<i64> = newest_first.iter().map(|b| b.0).filter(|id| !kept.contains(id)).collect();
    out.sort_unstable();
    out
}

fn keep_newest_per_period(
    newest_first: &[(i64, DateTime<Utc>)],
    count: u32,
    period: impl Fn(&DateTime<Utc>) -> (i32, u32),
    kept: &mut HashSet<i64>,
) {
    let mut seen = 0;
    let mut last = None;
    for (id, t) in newest_first {
        if seen >= count {
            break;
        }
        let p = period(t);
        if last != Some(p) {
            kept.insert(*id);
            seen += 1;
            last = Some(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn daily_backups(n: i64) -> Vec<(i64, DateTime<Utc>)> {
        // One backup a day at 07:00 UTC, id 1 the oldest, ending 2026-11-21.
        let end = Utc.with_ymd_and_hms(2026, 11, 21, 7, 0, 0).unwrap();
        (1..=n).map(|id| (id, end - Duration::days(n - id))).collect()
    }

    #[test]
    fn keeps_last_days_weeks_and_months() {
        let b = daily_backups(400);
        let exp = expired(&b, Policy { daily: 7, weekly: 4, monthly: 12 }, Tz::UTC);
        let kept: Vec<i64> = b.iter().map(|x| x.0).filter(|id| !exp.contains(id)).collect();
        // 2026-11-21 is a Saturday. Daily: Nov 15..=21 (ids 394..=400).
        // Weekly: the newest of the weeks ending Nov 22 (400) and Nov 15
        // (394, already kept), Nov 8 (387) and Nov 1 (380): 2 more.
        // Monthly: November (400) and the last day of 11 earlier months.
        assert!((394..=400).all(|id| kept.contains(&id)));
        assert!(kept.contains(&387) && kept.contains(&380));
        assert_eq!(kept.len(), 7 + 2 + 11, "kept {kept:?}");
        // The newest backup of October 2026 (Oct 31) is kept as a monthly.
        let oct31 =
            b.iter().find(|x| x.1.date_naive() == chrono::NaiveDate::from_ymd_opt(2026, 10, 31).unwrap()).unwrap();
        assert!(kept.contains(&oct31.0));
    }

    #[test]
    fn several_a_day_keep_only_the_newest_of_each_day() {
        let base = Utc.with_ymd_and_hms(2026, 11, 20, 1, 0, 0).unwrap();
        let b: Vec<_> = (0..6).map(|i| (i + 1, base + Duration::hours(i * 8))).collect();
        // Days: 20th: ids 1,2,3 (01,09,17h); 21st: ids 4,5,6 (01,09,17h).
        let exp = expired(&b, Policy { daily: 2, weekly: 0, monthly: 0 }, Tz::UTC);
        assert_eq!(exp, vec![1, 2, 4, 5]);
    }

    #[test]
    fn days_are_taken_in_the_schedule_zone() {
        // 23:30 UTC on the 20th and 00:30 UTC on the 21st are the same day in New York.
        let b = vec![
            (1, Utc.with_ymd_and_hms(2026, 11, 20, 23, 30, 0).unwrap()),
            (2, Utc.with_ymd_and_hms(2026, 11, 21, 0, 30, 0).unwrap()),
        ];
        let p = Policy { daily: 2, weekly: 0, monthly: 0 };
        assert_eq!(expired(&b, p, Tz::UTC), Vec::<i64>::new());
        assert_eq!(expired(&b, p, chrono_tz::America::New_York), vec![1]);
    }

    #[test]
    fn nothing_expires_when_within_policy_and_gaps_do_not_expire_everything() {
        let b = daily_backups(3);
        assert!(expired(&b, Policy { daily: 7, weekly: 0, monthly: 0 }, Tz::UTC).is_empty());
        // Backups from long ago, none recent: still the newest 2 days kept.
        let old: Vec<_> = daily_backups(5).into_iter().map(|(id, t)| (id, t - Duration::days(365))).collect();
        assert_eq!(expired(&old, Policy { daily: 2, weekly: 0, monthly: 0 }, Tz::UTC), vec![1, 2, 3]);
    }
}
