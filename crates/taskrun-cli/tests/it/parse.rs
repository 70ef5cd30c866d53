//! Flag values and formatting, in process: data-driven.

use std::time::Duration;

use taskrun_cli::{output, parse};
use taskrun_core::Timestamp;

#[test]
fn durations() {
    #[track_caller]
    fn check(text: &str, expect: Result<u64, &str>) {
        let got = parse::duration(text).map(|d| u64::try_from(d.as_millis()).unwrap());
        match (got, expect) {
            (Ok(ms), Ok(want)) => assert_eq!(ms, want, "{text}"),
            (Err(e), Err(want)) => assert!(e.contains(want), "{text}: {e:?} does not contain {want:?}"),
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }
    check("1500ms", Ok(1500));
    check("30s", Ok(30_000));
    check("5m", Ok(300_000));
    check("2h", Ok(7_200_000));
    check("1d", Ok(86_400_000));
    check("1h30m", Ok(5_400_000));
    check("1m30s500ms", Ok(90_500));
    check("0s", Ok(0));
    check(" 10s ", Ok(10_000));
    check("", Err("empty duration"));
    check("30", Err("has no unit: write e.g. 30s or 30ms"));
    check("5 m", Err("has no unit"));
    check("1.5s", Err("use whole numbers (e.g. 1500ms rather than 1.5s)"));
    check("5min", Err("unknown unit \"min\""));
    check("-5s", Err("expected a number"));
    check("99999999999999999999s", Err("too large"));
    check("999999999999999999d", Err("too large"));
}

#[test]
fn durations_print_the_way_they_parse() {
    for (ms, text) in [
        (0, "0s"),
        (7, "7ms"),
        (1500, "1500ms"),
        (90_000, "1m30s"),
        (300_000, "5m"),
        (5_400_000, "1h30m"),
        (86_400_000, "1d"),
        (90_061_000, "1d1h1m1s"),
    ] {
        assert_eq!(parse::format_duration_ms(ms), text);
        assert_eq!(parse::duration(text).unwrap(), Duration::from_millis(ms));
    }
}

#[test]
fn labels() {
    assert_eq!(parse::label("team=search"), Ok(("team".to_owned(), "search".to_owned())));
    assert_eq!(parse::label("example.com/tier=gold"), Ok(("example.com/tier".to_owned(), "gold".to_owned())));
    assert_eq!(parse::label("empty="), Ok(("empty".to_owned(), String::new())));
    assert!(parse::label("team").unwrap_err().contains("write KEY=VALUE"));
    assert!(parse::label("=x").unwrap_err().contains("label key must be"));
    assert!(parse::label("k=a b").unwrap_err().contains("label value must be"));
    let pairs = [("a".to_owned(), "1".to_owned()), ("a".to_owned(), "2".to_owned())];
    assert_eq!(parse::labels("--label", &pairs).unwrap_err(), "--label a is given twice (a=1 and a=2)");
}

#[test]
fn references_and_ids() {
    assert_eq!(parse::agent_ref("echo@1.2.3").unwrap().to_string(), "echo@1.2.3");
    assert!(parse::agent_ref("Echo").unwrap_err().contains("must start with a lowercase letter"));
    assert!(parse::agent_ref("echo@1.2").unwrap_err().contains("MAJOR.MINOR.PATCH"));
    assert!(parse::task_id("task with spaces").unwrap_err().contains("not allowed"));
    assert!(parse::key_id("ed25519:AAAA").unwrap_err().contains("public key, not a key id"));
    assert_eq!(parse::task_status("Cancelled").unwrap().as_str(), "CANCELLED");
}

#[test]
fn a_hint_the_reason_already_gives_is_not_repeated() {
    assert_eq!(parse::agent_version("0.2").unwrap_err(), "\"0.2\": expected MAJOR.MINOR.PATCH, e.g. 1.2.3");
    assert_eq!(
        parse::agent_version("1.02.3").unwrap_err(),
        "\"1.02.3\": each part must be a number without leading zeros (write MAJOR.MINOR.PATCH, e.g. 1.2.3)"
    );
}

#[test]
fn an_error_and_its_causes_are_one_line_each_said_once() {
    // The signing crate's file errors say their source and name it as
    // their cause: anyhow's "{:#}" would print it twice.
    let error = taskrun_signing::PublicKey::load("/nonexistent/k.pub").unwrap_err();
    let error = anyhow::Error::new(error).context("cannot read the public key");
    assert_eq!(
        taskrun_cli::error::message(&error),
        "cannot read the public key: /nonexistent/k.pub: No such file or directory (os error 2)"
    );
    let error = anyhow::anyhow!("line one\n  line two").context("outer");
    assert_eq!(taskrun_cli::error::message(&error), "outer: line one line two");
}

#[test]
fn times_are_utc_rfc3339() {
    for (ms, text) in [
        (0, "1970-01-01T00:00:00Z"),
        (1_700_000_000_000, "2023-11-14T22:13:20Z"),
        (951_782_400_000, "2000-02-29T00:00:00Z"),
        (4_102_444_799_999, "2099-12-31T23:59:59Z"),
        (-1, "1969-12-31T23:59:59Z"),
    ] {
        assert_eq!(output::time(Timestamp::from_millis(ms)), text);
    }
    assert_eq!(output::date(Timestamp::from_millis(1_700_000_000_000)), "2023-11-14");
}

#[test]
fn sizes_and_tables() {
    assert_eq!(output::bytes(812), "812 B");
    assert_eq!(output::bytes(1536), "1.5 KiB");
    assert_eq!(output::bytes(64 << 20), "64.0 MiB");
    let rows = vec![
        vec!["a".to_owned(), "longer".to_owned(), "x".to_owned()],
        vec!["bbbb".to_owned(), "-".to_owned(), "last column is not padded".to_owned()],
    ];
    expect_test::expect![[r#"
        NAME  VALUE   NOTE
        a     longer  x
        bbbb  -       last column is not padded
    "#]]
    .assert_eq(&output::table(&["NAME", "VALUE", "NOTE"], &rows));
}
