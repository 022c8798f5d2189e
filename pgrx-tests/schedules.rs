// backups.schedule(), schedules() and unschedule().

#[pg_test]
fn schedule_shows_the_next_run_in_utc() {
    run("SET LOCAL TimeZone = 'UTC'");
    run("SELECT backups.schedule('daily 07:00 Europe/Paris')");
    let (spec, tz): (String, String) = (
        one("SELECT schedule FROM backups.schedules() WHERE database = current_database()"),
        one("SELECT timezone FROM backups.schedules() WHERE database = current_database()"),
    );
    assert_eq!((spec.as_str(), tz.as_str()), ("daily 07:00 Europe/Paris", "Europe/Paris"));
    // 07:00 in Paris is 06:00 UTC in winter and 05:00 UTC in summer.
    let local: String = one("SELECT to_char(next_run_local, 'HH24:MI:SS') FROM backups.schedules()");
    assert_eq!(local, "07:00:00");
    let utc_hour: i32 = one("SELECT extract(hour FROM next_run_utc)::int FROM backups.schedules()");
    let summer: bool = one("SELECT (next_run_at AT TIME ZONE 'Europe/Paris') - (next_run_at AT TIME ZONE 'UTC') = interval '2 hours' FROM backups.schedules()");
    assert_eq!(utc_hour, if summer { 5 } else { 6 });
    let soon: bool = one("SELECT next_run_at > now() AND next_run_at <= now() + interval '1 day' FROM backups.schedules()");
    assert!(soon);
}

#[pg_test]
fn scheduling_again_replaces_the_schedule() {
    run("SELECT backups.schedule('daily 02:00')");
    run("SELECT backups.schedule('weekly sun 03:00 America/New_York', retain_daily => 3)");
    assert_eq!(one::<i64>("SELECT count(*) FROM backups.schedules()"), 1);
    let (cron, daily): (String, i32) = (
        one("SELECT cron FROM backups.schedules WHERE database = current_database()"),
        one("SELECT retain_daily FROM backups.schedules WHERE database = current_database()"),
    );
    assert_eq!((cron.as_str(), daily), ("0 3 * * 0", 3));
    let dow: i32 = one("SELECT extract(dow FROM next_run_local)::int FROM backups.schedules()");
    assert_eq!(dow, 0);
}

#[pg_test]
fn hourly_and_cron_schedules() {
    run("SELECT backups.schedule('hourly')");
    let minute: i32 = one("SELECT extract(minute FROM next_run_utc)::int FROM backups.schedules()");
    assert_eq!(minute, 0);
    run("SELECT backups.schedule('*/15 * * * *')");
    let minute: i32 = one("SELECT extract(minute FROM next_run_utc)::int FROM backups.schedules()");
    assert_eq!(minute % 15, 0);
}

#[pg_test]
fn unschedule_removes_the_schedule() {
    run("SELECT backups.schedule('daily 02:00')");
    run("SELECT backups.unschedule()");
    assert_eq!(one::<i64>("SELECT count(*) FROM backups.schedules()"), 0);
}

#[pg_test(error = "unknown time zone \"Mars/Olympus\": use an IANA name such as Europe/Paris or America/New_York")]
fn an_unknown_zone_is_an_error() {
    run("SELECT backups.schedule('daily 07:00 Mars/Olympus')");
}

#[pg_test(error = "invalid time \"25:00\": use a 24-hour HH:MM such as 07:00 or 19:30")]
fn a_malformed_time_is_an_error() {
    run("SELECT backups.schedule('daily 25:00')");
}

#[pg_test(error = "retention counts must be zero or more (got daily -1, weekly 4, monthly 12)")]
fn negative_retention_is_an_error() {
    run("SELECT backups.schedule('daily 02:00', retain_daily => -1)");
}

#[pg_test(error = "database \"no_such_db\" has no backup schedule")]
fn unscheduling_a_database_without_schedule_is_an_error() {
    run("SELECT backups.unschedule('no_such_db')");
}
