//! `strait demo`, the README's main command: two embedded brokers linked on loopback. Runs it
//! for a few seconds and checks that it mirrored the sample stream completely and stopped
//! cleanly.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn demo_mirrors_the_sample_stream_and_stops_cleanly() {
    let work = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let output = Command::new(common::strait_bin())
        .args(["demo", "--duration", "4", "--rate", "5000"])
        .arg("--data-dir")
        .arg(work.path())
        .output()
        .expect("run strait demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "strait demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("west holds every record of east, at the same offsets."),
        "{stdout}"
    );
    // The last status line shows the link active and records mirrored.
    assert!(stdout.contains("link active"), "{stdout}");
    let east = stdout
        .lines()
        .find_map(|l| l.strip_prefix("east end offsets "))
        .expect("east end offsets line");
    let west = stdout
        .lines()
        .find_map(|l| l.strip_prefix("west end offsets "))
        .expect("west end offsets line");
    assert_eq!(east, west);
    assert_ne!(east, "[0, 0, 0, 0, 0, 0]", "the demo produced nothing");
    assert!(started.elapsed() < Duration::from_secs(60));
    println!("demo: {east} on both sides in {:?}", started.elapsed());
}
